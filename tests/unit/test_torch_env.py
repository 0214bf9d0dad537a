"""The optional PyTorch environment: requirements-torch.lock beside the main lock, and
scripts/torch.sh (`make torch`) asking a package index for the pinned CPU build. The indexes
are folders here (pip's simple layout, file:// URLs, this machine's pip config ignored), so
nothing is downloaded and nothing is installed (`check` is pip's dry run)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from infbench.paths import ROOT

pytestmark = pytest.mark.unit

SCRIPT = ROOT / "scripts" / "torch.sh"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            out[name.lower().replace("_", "-")] = version
    return out


def test_torch_and_what_only_it_needs_are_in_their_own_lock() -> None:
    main, torch = pins(ROOT / "requirements.lock"), pins(ROOT / "requirements-torch.lock")
    assert torch["torch"].endswith("+cpu")  # the CPU build, never PyPI's CUDA one
    assert set(torch) >= {"torch", "sympy", "mpmath", "networkx", "fsspec", "filelock"}
    assert not set(torch) & set(main), "a package in both locks"
    # What torch needs that others need too stays in the main lock.
    assert {"jinja2", "typing-extensions"} <= set(main)


def index(root: Path, files: dict[str, bytes]) -> str:
    """A simple-API index in `root` with one project page for torch, listing `files`."""
    page = root / "torch"
    page.mkdir(parents=True)
    links = []
    for name, data in files.items():
        (page / name).write_bytes(data)
        links.append(f'<a href="{name}">{name}</a>')
    (page / "index.html").write_text(f"<html><body>{''.join(links)}</body></html>")
    return root.as_uri()


def wheel(version: str) -> bytes:
    """A wheel of torch `version` that pip can read the metadata of (it is never installed)."""
    info = f"torch-{version}.dist-info"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                    "Tag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return buf.getvalue()


def check(tmp_path: Path, main_index: str,
          torch_index: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL=main_index, PIP_NO_CACHE_DIR="1",
               TORCH_INDEX_URL=torch_index)
    return subprocess.run([str(SCRIPT), "check", sys.executable], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


def test_an_index_with_only_the_cuda_build_is_one_line_naming_the_cpu_index(
        tmp_path: Path) -> None:
    version = pins(ROOT / "requirements-torch.lock")["torch"]
    cuda_only = index(tmp_path / "pypi", {
        f"torch-{version.removesuffix('+cpu')}-py3-none-any.whl":
            wheel(version.removesuffix("+cpu"))})
    res = check(tmp_path, cuda_only)
    assert res.returncode == 1 and res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"make torch: error: no CPU build of torch=={version} on this "
                               "machine's package index: PyPI's Linux torch is the CUDA build")
    assert "~530 MB" in lines[0] and f"make torch TORCH_INDEX_URL={CPU_INDEX}" in lines[0]


def test_torch_index_url_names_an_index_that_has_the_cpu_build(tmp_path: Path) -> None:
    version = pins(ROOT / "requirements-torch.lock")["torch"]
    empty = tmp_path / "pypi"
    empty.mkdir()
    cpu = index(tmp_path / "cpu", {f"torch-{version}-py3-none-any.whl": wheel(version)})
    res = check(tmp_path, empty.as_uri(), cpu)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == (f"torch: torch=={version} is on this machine's package "
                                  f"index and {cpu}")


def run_torch_tests(ci: str) -> subprocess.CompletedProcess[str]:
    """pytest on the real tests/torch/ with torch counted as missing (the folder's marker is
    what makes them need it); every test stops in its set-up, before any fixture runs."""
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(CI=ci, INFBENCH_TEST_PRETEND_MISSING="torch")
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/torch"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_outside_ci_the_torch_tests_without_torch_are_skips_and_one_line() -> None:
    res = run_torch_tests(ci="")
    assert res.returncode == 0, res.stdout[-2000:]
    last = res.stdout.strip().splitlines()[-1]
    assert " skipped in " in last and "passed" not in last and "error" not in last, last
    lines = [x for x in res.stdout.splitlines() if x.startswith("infbench: ")]
    assert len(lines) == 1 and lines[0].endswith(
        "test(s) skipped: needs PyTorch, which is not installed (optional): make torch, or "
        "make test-torch"), lines


def test_under_ci_a_torch_test_without_torch_fails() -> None:
    res = run_torch_tests(ci="true")
    assert res.returncode == 1, res.stdout[-2000:]
    last = res.stdout.strip().splitlines()[-1]
    assert " error" in last and "skipped" not in last and "passed" not in last, last
    assert "CI=true and the test needs PyTorch" in res.stdout
