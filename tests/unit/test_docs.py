"""The README and docs/ say only what is there: links and anchors resolve, `make` targets are the
makefile's, `infbench` flags are the parser's, repository paths exist, and the INFBENCH_*
variables documented in docs/configuration.md are exactly the ones the code reads.

Files in, nothing run: the makefile is parsed, the CLI's parser is built (not run)."""

from __future__ import annotations

import argparse
import fnmatch
import re
import unicodedata
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from infbench.cli import main
from infbench.paths import ROOT

DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
CONFIGURATION = ROOT / "docs" / "configuration.md"

# Where the code that reads INFBENCH_* variables lives (the harness, servers, load, scripts).
CODE_DIRS = ("infbench", "servers", "loadtests", "scripts", "docker", "examples")
CODE_FILES = ("makefile",)
# Read only by the tests and benchmarks: a doc may name them, configuration.md need not.
TEST_DIRS = ("tests", "benchmarks")
VAR = re.compile(r"INFBENCH_[A-Z0-9_]+")
# The command line's files (infbench/cli/*.py: args.py and one module per command) name their
# variables without the prefix: env("RUN_ID"), env_flag("PROBES") and so on.
CLI_DIR = ROOT / "infbench" / "cli"
CLI_ENV = re.compile(r"""\benv(?:_flag)?\(\s*["']([A-Z0-9_]+)["']""")

FENCE = re.compile(r"^(```|~~~)")
SPAN = re.compile(r"(`+)(.+?)\1", re.DOTALL)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
MAKE = re.compile(r"(?:^|[\s(`;&|])make\s+([^\n#;&|`)]*)")
TARGET = re.compile(r"^[A-Za-z0-9_.%<>…*-]+$")
INFBENCH_CALL = re.compile(
    r"(?:python3?\s+-m\s+infbench|(?:^|[\s/(])infbench)\s+"
    r"(?:--\S+\s+\S+\s+)*(list|build|run|diagnose|capacity|profile|report|compare|check|overhead)\b")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
# Flags of other tools that a paragraph beside an infbench command may name in their own code
# span: Locust's distributed mode, mprof's and pytest's options, Uvicorn's worker count.
FOREIGN_FLAGS = {"--processes", "--master", "--worker", "--master-host", "--include-children",
                 "--multiprocess", "--exit-code", "--durations", "--workers"}
PATH_PREFIXES = ("infbench/", "servers/", "tests/", "scripts/", "docker/", "loadtests/",
                 "benchmarks/", "examples/", "docs/", "results/reference",
                 "results/queue-reference", ".ci/")
TOP_FILES = {"README.md", "makefile", "experiments.toml", "pyproject.toml", "requirements.lock",
             "requirements-nodeps.lock", "requirements-torch.lock", ".gitignore"}
PLACEHOLDER = re.compile(r"<[^<>/]*>|\{[^{}/]*\}|…|\*")


@dataclass(frozen=True)
class Doc:
    path: Path
    text: str
    prose: str  # the text with fenced code blocks blanked out (line numbers kept)
    blocks: tuple[tuple[int, str], ...]  # (first line, content) of each fenced code block

    @property
    def name(self) -> str:
        return str(self.path.relative_to(ROOT))

    def spans(self) -> list[tuple[int, str]]:
        """(line, text) of every inline code span, outside code blocks."""
        return [(self.prose.count("\n", 0, m.start()) + 1, " ".join(m.group(2).split()))
                for m in SPAN.finditer(self.prose)]


@cache
def doc(path: Path) -> Doc:
    text = path.read_text()
    prose: list[str] = []
    blocks: list[tuple[int, str]] = []
    fence: str | None = None
    start = 0
    body: list[str] = []
    for n, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line.lstrip())
        if fence is None and m:
            fence, start, body = m.group(1), n, []
            prose.append("")
        elif fence is not None:
            if line.strip().startswith(fence) and not line.strip().strip(fence[0]):
                blocks.append((start, "\n".join(body)))
                fence = None
            else:
                body.append(line)
            prose.append("")
        else:
            prose.append(line)
    assert fence is None, f"{path}: a code block that is never closed (line {start})"
    return Doc(path, text, "\n".join(prose), tuple(blocks))


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, markup dropped, punctuation dropped but '-' and
    '_', spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = text.replace("`", "").lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LMN")
    return kept.replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in doc(path).prose.splitlines():
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return frozenset(found)


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(path: Path) -> None:
    d = doc(path)
    bad: list[str] = []
    for m in LINK.finditer(d.prose):
        target = m.group(1)
        line = d.prose.count("\n", 0, m.start()) + 1
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            bad.append(f"line {line}: {target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"line {line}: {target}: no heading #{anchor} in {dest.name}")
    assert not bad, f"{d.name}:\n" + "\n".join(bad)


@cache
def make_targets() -> tuple[frozenset[str], tuple[re.Pattern[str], ...]]:
    """The makefile's explicit targets, and its pattern rules as regular expressions."""
    explicit: set[str] = set()
    patterns: list[re.Pattern[str]] = []
    for line in (ROOT / "makefile").read_text().splitlines():
        m = re.match(r"^([^\s:=#][^:=]*?)\s*::?(?![=])", line)
        if not m or line.startswith("\t"):
            continue
        for name in m.group(1).split():
            if "$" in name or name.startswith("."):
                continue
            if "%" in name:
                patterns.append(re.compile(
                    "^" + ".+".join(re.escape(p) for p in name.split("%")) + "$"))
            else:
                explicit.add(name)
    return frozenset(explicit), tuple(patterns)


def is_target(name: str) -> bool:
    explicit, patterns = make_targets()
    if PLACEHOLDER.search(name):  # run_<variant>, bench-…: a rule must cover it
        glob = PLACEHOLDER.sub("*", name)
        sample = PLACEHOLDER.sub("x", name)
        return (any(fnmatch.fnmatchcase(t, glob) for t in explicit)
                or any(p.match(sample) for p in patterns))
    return name in explicit or any(p.match(name) for p in patterns)


def named_targets(code: str) -> list[str]:
    """The targets of every `make ...` command in a piece of code (variables, flags and
    optional [X=1] parts left out)."""
    out: list[str] = []
    for m in MAKE.finditer(code):
        for word in m.group(1).split():
            if word.startswith(("[", "-", "$", '"', "'")) or "=" in word:
                continue
            if not TARGET.match(word):
                break  # prose after the command
            out.append(word)
    return out


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_make_target_named_in_code_is_in_the_makefile(path: Path) -> None:
    d = doc(path)
    pieces = d.spans() + [(n + i, line.split("#", 1)[0]) for n, body in d.blocks
                          for i, line in enumerate(body.splitlines(), 1)]
    bad = sorted({f"line {n}: make {t}" for n, code in pieces for t in named_targets(code)
                  if not is_target(t)})
    assert not bad, f"{d.name}: targets the makefile does not have:\n" + "\n".join(bad)


@cache
def cli_flags() -> frozenset[str]:
    flags: set[str] = set()

    def walk(p: argparse.ArgumentParser) -> None:
        for action in p._actions:
            flags.update(o for o in action.option_strings if o.startswith("--"))
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    walk(sub)

    walk(main.parser())
    return frozenset(flags)


def flags_beside_infbench(d: Doc) -> list[tuple[int, str]]:
    """Flags on a line (of code) that invokes infbench, and flag-only code spans in a prose
    paragraph that contains such a line."""
    found: list[tuple[int, str]] = []
    for start, body in d.blocks:
        for i, line in enumerate(body.splitlines(), 1):
            code = line.split("#", 1)[0]
            if INFBENCH_CALL.search(code):
                found += [(start + i, f) for f in FLAG.findall(code)]
    line_no = 1
    for para in re.split(r"\n\s*\n", d.prose):
        first = line_no + len(para) - len(para.lstrip("\n"))
        line_no += para.count("\n") + 2
        rows = para.splitlines() if para.lstrip().startswith("|") else [para]
        for row in rows:
            spans = [" ".join(m.group(2).split()) for m in SPAN.finditer(row)]
            if not any(INFBENCH_CALL.search(s) for s in spans):
                continue
            for s in spans:
                if INFBENCH_CALL.search(s) or s.startswith("--"):
                    found += [(first, f) for f in FLAG.findall(s) if f not in FOREIGN_FLAGS]
    return found


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_infbench_flag_named_is_one_of_the_parser(path: Path) -> None:
    d = doc(path)
    bad = sorted({f"near line {n}: {f}" for n, f in flags_beside_infbench(d)
                  if f not in cli_flags()})
    assert not bad, f"{d.name}: flags `python -m infbench` does not have:\n" + "\n".join(bad)


def repo_path(span: str) -> str | None:
    """The repository path a code span names, if it names one."""
    word = span.split()[0] if span.split() else ""
    word = word.rstrip(".,;:)")
    if word in TOP_FILES or word.startswith(PATH_PREFIXES):
        return word
    return None


def exists(path: str) -> bool:
    if PLACEHOLDER.search(path):
        glob = PLACEHOLDER.sub("*", path.rstrip("/"))
        return any(ROOT.glob(glob))
    return (ROOT / path).exists()


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_repository_path_named_exists(path: Path) -> None:
    d = doc(path)
    bad = sorted({f"line {n}: {p}" for n, span in d.spans()
                  if (p := repo_path(span)) is not None and not exists(p)})
    assert not bad, f"{d.name}: paths that do not exist:\n" + "\n".join(bad)


def read_vars(dirs: tuple[str, ...], files: tuple[str, ...] = ()) -> set[str]:
    found: set[str] = set()
    sources = [ROOT / f for f in files]
    for top in dirs:
        sources += [p for p in (ROOT / top).rglob("*")
                    if p.is_file() and p.suffix in {".py", ".sh", ".toml", ""}
                    and "__pycache__" not in p.parts]
    for p in sources:
        text = p.read_text(errors="replace")
        found.update(VAR.findall(text))
        if p.parent == CLI_DIR:
            found.update(f"INFBENCH_{n}" for n in CLI_ENV.findall(text))
    return found


def documented(paths: list[Path]) -> set[str]:
    return {v for p in paths for v in VAR.findall(p.read_text())}


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_figure_is_left_to_measure(path: Path) -> None:
    """Every figure in the docs was measured: no placeholder stands in for one."""
    text = path.read_text()
    assert "TBD" not in text and "TODO" not in text, path


def test_the_readme_is_a_front_door() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def test_every_variable_the_code_reads_is_in_the_configuration_page() -> None:
    # A name ending in '_' is a prefix in a comment ("the INFBENCH_MODEL_* variables").
    code = {v for v in read_vars(CODE_DIRS, CODE_FILES) if not v.endswith("_")}
    missing = sorted(code - documented([CONFIGURATION]))
    assert not missing, f"docs/configuration.md does not document: {', '.join(missing)}"


def test_every_variable_the_docs_name_is_read_by_the_code() -> None:
    code = read_vars(CODE_DIRS + TEST_DIRS, CODE_FILES)
    bad = []
    for p in DOCS:
        for v in sorted(documented([p])):
            known = any(c.startswith(v) for c in code) if v.endswith("_") else v in code
            if not known:
                bad.append(f"{p.relative_to(ROOT)}: {v}")
    assert not bad, "variables no code reads:\n" + "\n".join(bad)


def test_the_checks_themselves() -> None:
    """The rules above on known cases, so that a check that silently matches nothing fails."""
    assert slug("Threads: anyio's limiter at 1, 4 and 40 (`make run_study STUDY=threads`)") \
        == "threads-anyios-limiter-at-1-4-and-40-make-run_study-studythreads"
    assert slug("The queue study: API → Redis → model workers") \
        == "the-queue-study-api--redis--model-workers"
    assert named_targets("make compare A=<run> B=<run> [FORCE=1]") == ["compare"]
    assert named_targets("sudo make system") == ["system"]
    assert is_target("run_starlette-uvicorn") and is_target("run_<variant>")
    assert is_target("bench-…") and is_target("capacity_<variant>")
    assert not is_target("no-such-target") and not is_target("frobnicate_<variant>")
    assert {"--p95-ms", "--force", "--thresholds", "--run-id"} <= cli_flags()
    sample = Doc(Path("x.md"), "", "Run `python -m infbench compare A B` (`--out DIR`).", ())
    assert [f for _, f in flags_beside_infbench(sample)] == ["--out"]
    assert repo_path("servers/shared/model.py: the model") == "servers/shared/model.py"
    assert repo_path("build/images/") is None
    assert exists("servers/scoring/scoring_*.py") and not exists("servers/no_such_file.py")
    # Named only through env(...) in infbench/cli/args.py, never spelled out.
    assert {"INFBENCH_RUN_ID", "INFBENCH_RUN"} <= read_vars(("infbench",))
    assert CLI_ENV.findall('env("RUN_ID") env_flag("PROBES") os.environ.get("X") '
                           'get_env("Y")') == ["RUN_ID", "PROBES"]


def test_every_cli_variable_is_read_where_the_parser_is_built() -> None:
    """Each env("...") of the command line is read by a module the parser is built from: a
    command module that main.py no longer registers would otherwise keep its variables
    'documented' here while the parser has no option for them."""
    registered = {Path(str(getattr(c, "__file__", ""))).name for c in main.COMMANDS}
    registered |= {"args.py", "main.py"}
    reading = {p.name for p in CLI_DIR.glob("*.py") if CLI_ENV.search(p.read_text())}
    assert reading, "no env(...) call found in infbench/cli/: the scan reads nothing"
    assert reading <= registered, f"not registered in main.COMMANDS: {reading - registered}"
    assert {c.NAME for c in main.COMMANDS} == set(
        next(a for a in main.parser()._actions
             if isinstance(a, argparse._SubParsersAction)).choices)
