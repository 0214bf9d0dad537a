"""report.html: sections in order, everything escaped, self-contained, and rendered by a real
headless Chromium (tables there, images decoded, no console errors); the plots' phase labels
do not print over each other."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pytest
from PIL import Image

from infbench.report import build, html, plots
from infbench.report.tables import Table
from tests.fixtures.runfixtures import make_run
from tests.fixtures.synth import T0, phase

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.requires("chromium")
EVIL = "ev<i>l\"&'"
PROBE = """<script>
window.addEventListener('load', function () {
  var imgs = Array.from(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  var out = document.createElement('pre');
  out.id = 'infbench-probe';
  out.textContent = JSON.stringify({images: imgs.length, decoded: ok.length,
    widths: ok.map(function (i) { return i.naturalWidth; }),
    tables: document.querySelectorAll('table').length,
    rows: document.querySelectorAll('tbody tr').length,
    h2: Array.from(document.querySelectorAll('h2')).map(function (h) { return h.textContent; })});
  document.body.appendChild(out);
});
</script>"""


class Outline(HTMLParser):
    """Tags, headings and table headers of a page, to check its structure without a browser."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.headings: list[str] = []
        self.headers: list[str] = []
        self.hrefs: list[str] = []
        self.srcs: list[str] = []
        self._text: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        a = dict(attrs)
        if tag == "a" and a.get("href"):
            self.hrefs.append(a["href"] or "")
        if tag == "img":
            self.srcs.append(a.get("src") or "")
        if tag in ("h2", "h3", "th"):
            self._text = []

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("h2", "h3", "th") and self._text is not None:
            text = "".join(self._text).strip()
            (self.headers if tag == "th" else self.headings).append(text)
            self._text = None


def outline(text: str) -> Outline:
    o = Outline()
    o.feed(text)
    return o


def built_run(tmp_path: Path) -> Path:
    """Two variants, one named with HTML in it and failed with an HTML-ish error and a fault;
    the real report build writes report.html."""
    run = make_run(tmp_path / "results", "20260101-000000", seed=1, variants=("v1", EVIL))
    ph_path = run / EVIL / "phases.json"
    ph = json.loads(ph_path.read_text())
    ph.update(schema=2, status="failed", error="<script>alert('x')</script> & died",
              events=[{"t": T0 + 15, "kind": "process_exited", "fault": True,
                       "detail": "<b>pid 42</b> exited", "phase": "step 1 (batch 2)"}])
    ph_path.write_text(json.dumps(ph))
    (run / "v1" / "step1-b2.html").write_text("<html>Locust</html>")
    build.build(run)
    return run


def test_report_page_sections_escaping_and_links(tmp_path: Path) -> None:
    run = built_run(tmp_path)
    page = (run / "report.html").read_text()
    o = outline(page)
    order = ["Run status and faults", "Verdicts: leak, allocator retention or plateau",
             "The variants side by side", "v1 complete", f"{EVIL} failed", "Definitions"]
    positions = [o.headings.index(h) for h in order]
    assert positions == sorted(positions), o.headings
    # Escaped everywhere: the name, the error, the fault's detail; no script, no network.
    assert EVIL not in page and "ev&lt;i&gt;l&quot;&amp;&#x27;" in page
    assert "<script" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)" in page
    assert "&lt;b&gt;pid 42&lt;/b&gt; exited" in page and "process_exited" in page
    assert "script" not in o.tags and "link" not in o.tags
    assert not re.search(r"(src|href)=\"(https?:)?//", page)
    # Plots embedded: the overlay and each variant's memory plot.
    assert len(o.srcs) == 3 and all(s.startswith("data:image/png;base64,") for s in o.srcs)
    # Relative links to the raw files and Locust's page; the odd name is URL-quoted.
    assert "v1/step1-b2.html" in o.hrefs and "v1/mprofile.dat" in o.hrefs
    assert "ev%3Ci%3El%22%26%27/phases.json" in o.hrefs
    assert not any(h.startswith("/") for h in o.hrefs)
    for header in ("after API start (MB)", "req/s", "p95 (ms)", "Locust", "verdict"):
        assert header in o.headers
    # summary.md's cross-variant tables, the same in the page (built once, report/tables.py).
    assert "Against v1 (per step)" in o.headings and "req/s change" in o.headers
    assert "Ranking by images/s at each batch size" in o.headings


def test_report_tables_render_escaped_and_aligned() -> None:
    got = html.table_of(Table("t", ("name", ">n"), (("**a<b**", "1"), ("x | y", "2"))))
    assert got == ("<table><thead><tr><th>name</th><th class=num>n</th></tr></thead><tbody>"
                   "<tr><td><b>a&lt;b</b></td><td class=num>1</td></tr>"
                   "<tr><td>x | y</td><td class=num>2</td></tr></tbody></table>")
    assert html.table_of(Table("t", ("a",), ())) == ""


def test_services_split_and_comparison_render(tmp_path: Path) -> None:
    run = make_run(tmp_path, "20260101-000000", seed=1)
    row: dict[str, Any] = json.loads((run / "v1" / "summary.json").read_text())
    row["services"] = {
        "api": {"replicas": 2, "labels": ["api-0", "api-1"],
                "memory_mb": {"start": 100.0, "end": 150.0, "growth": 50.0, "peak": 160.0},
                "steps": [{"index": 1, "cpu_pct": 35.0, "rss_mb": 140.0},
                          {"index": 2, "cpu_pct": 40.0, "rss_mb": 150.0}]},
        "worker": {"replicas": 1, "labels": ["worker-0"],
                   "memory_mb": {"start": 300.0, "end": 420.0, "growth": 120.0, "peak": 430.0},
                   "steps": [{"index": 1, "cpu_pct": 97.0, "rss_mb": 410.0},
                             {"index": 2, "cpu_pct": 99.0, "rss_mb": 420.0}]}}
    row["split"] = [{"index": 1, "users": 4, "failures_by_kind": {"HTTP 504": 3},
                     "split": {"requests": 40, "total_ms": 900.0, "queue_wait_ms": 700.0,
                               "model_ms": 150.0, "api_overhead_ms": 50.0, "mean_batch": 3.5}}]
    info = json.loads((run / "run.json").read_text())
    plots.split_plot(row["split"], row["steps"], run / "v1" / "time_split.png", "split")
    page = html.render(run, info, [row])
    o = outline(page)
    assert 'alt="v1: where the time goes, per step" src="data:image/png;base64,' in page
    assert "Per service (memory by mprof, replicas summed; CPU % of one core and RSS at the " \
        "end of each step)" in o.headings
    assert "Where the time goes, and the bottleneck (per step)" in o.headings
    assert "35 / 40" in page and "97 / 99" in page and "HTTP 504: 3" in page
    assert "the model workers are the bottleneck" in page
    assert "queue wait 700, model 150, api overhead 50" in page
    # No services, no split: no such sections.
    plain = outline(html.render(run, info, [json.loads((run / "v1" / "summary.json")
                                                              .read_text())]))
    assert not any(h.startswith(("Per service", "Where the time goes")) for h in plain.headings)
    # A run stopped before its last variant says so first, even if what ran was complete.
    cut = dict(info, status="interrupted", stopped_in="v<2>", error="Ctrl-C")
    page = html.render(run, cut, [json.loads((run / "v1" / "summary.json").read_text())])
    assert 'The run is <span class="badge bad">interrupted</span>, stopped in <b>v&lt;2&gt;</b>' \
        ": Ctrl-C" in page and "No faults" not in page


def test_compare_adds_a_section_to_b_report(tmp_path: Path) -> None:
    results = tmp_path / "results"
    a = make_run(results, "20260101-000000", seed=1)
    b = make_run(results, "20260102-000000", seed=2, rps=3.5, extra_mb=100)
    build.build(b)
    assert "Compared with other runs" not in (b / "report.html").read_text()
    done = subprocess.run([sys.executable, "-m", "infbench", "--results", str(results),
                           "compare", a.name, b.name], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"added to {b / 'report.html'}" in done.stdout
    page = (b / "report.html").read_text()
    o = outline(page)
    assert "Compared with other runs" in o.headings
    assert f"{a.name} (A) → {b.name} (B)" in o.headings
    assert '<span class="sig">worse (p = ' in page
    assert f"compare-{a.name}-vs-{b.name}.md" in o.hrefs
    # ... and it stays when the report is rebuilt from the run's files.
    build.build(b)
    assert "Compared with other runs" in (b / "report.html").read_text()
    # A comparison file from a newer infbench is named in the page, not a crash.
    (b / "compare-x-vs-y.json").write_text(json.dumps({"schema": 99, "variants": []}))
    html.rebuild(b)
    assert "comparison schema 99 is newer" in (b / "report.html").read_text()


# -- headless Chromium ------------------------------------------------------------------------
def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """One headless Chromium, its own profile folder, ended with its whole process group."""
    argv = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--no-first-run", "--enable-logging=stderr", "--v=0",
            f"--user-data-dir={tmp_path / 'chromium-profile'}", *args]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=90)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    return subprocess.CompletedProcess(argv, p.returncode, out, err)


def probe(tmp_path: Path, page: Path) -> tuple[dict[str, Any], list[str]]:
    """Load a copy of the page with a probe script; its findings and the console lines."""
    probed = page.with_name("probe-" + page.name)
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    done = chromium(tmp_path, "--dump-dom", probed.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r'<pre id="infbench-probe">([^<]*)</pre>', done.stdout)
    assert found, done.stdout[-2000:]
    import html as html_mod
    console = [line for line in done.stderr.splitlines()
               if ":CONSOLE" in line or "Uncaught" in line]
    return json.loads(html_mod.unescape(found.group(1))), console


@needs_chromium
def test_chromium_renders_tables_and_images_without_errors(tmp_path: Path) -> None:
    run = built_run(tmp_path)
    seen, console = probe(tmp_path, run / "report.html")
    assert console == []
    assert seen["images"] == 3 and seen["decoded"] == 3
    assert all(w >= 600 for w in seen["widths"])  # the 1000-px plots, decoded
    # verdicts, variants side by side, ranking by images/s (2 batch sizes x 2 variants),
    # against the first variant, and a load table per variant: 2 + 2 + 4 + 2 + 2 x 2 rows
    assert seen["tables"] == 6 and seen["rows"] == 14
    assert seen["h2"][0] == "Run status and faults" and f"{EVIL} failed" in seen["h2"]
    # The page as a person sees it: not blank.
    shot = tmp_path / "shot.png"
    done = chromium(tmp_path, "--hide-scrollbars", "--window-size=1000,1400",
                    f"--screenshot={shot}", (run / "report.html").as_uri())
    assert done.returncode == 0 and shot.exists()
    with Image.open(shot) as im:
        rgb = im.convert("RGB")
        assert rgb.size == (1000, 1400)
        colours = rgb.getcolors(maxcolors=1 << 20) or []
        white = sum(n for n, c in colours if min(c) >= 245)
    assert len(colours) > 100 and white < 0.9 * 1000 * 1400


@needs_chromium
def test_chromium_probe_catches_a_broken_page(tmp_path: Path) -> None:
    """The checks above can fail: a broken image and a script error are seen."""
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><table><tr><td>x</td></tr></table>"
                    '<img src="data:image/png;base64,AAAA"><script>missing();</script>'
                    "</body></html>")
    seen, console = probe(tmp_path, page)
    assert seen["images"] == 1 and seen["decoded"] == 0
    assert any("Uncaught ReferenceError" in line for line in console)


# -- phase labels -----------------------------------------------------------------------------
def test_phase_labels_do_not_overlap(tmp_path: Path) -> None:
    """A cycles-like run whose baseline is short beside a 10-image step: the labels would print
    over each other in one row; placed, none overlaps, and too many for three rows are hidden."""
    phases = [phase("baseline", 0, 2)]
    t = 2.0
    for cycle in range(4):
        for i, batch in enumerate((10, 40)):
            phases += [phase("step", t, t + 15, index=2 * cycle + i + 1, batch=batch),
                       phase("drain", t + 15, t + 17)]
            t += 19
        phases.append(phase("rest", t, t + 6))
        t += 6
    phases.append(phase("cooldown", t, t + 5))
    phases += [phase("trim", t + 5 + k * 0.3, t + 5.3 + k * 0.3) for k in range(12)]
    fig, ax = plt.subplots(figsize=(10, 4.8), dpi=100)
    try:
        ax.plot([0, t + 10], [0, 1000])
        labels = plots._shade(ax, phases, T0)
        fig.tight_layout()
        renderer = fig.canvas.get_renderer()

        def boxes(items: list[Any]) -> list[tuple[float, float, float, float]]:
            out = []
            for lb in items:
                b = lb.get_window_extent(renderer)
                out.append((b.x0, b.x1, b.y0, b.y1))
            return out

        def overlaps(bx: list[tuple[float, float, float, float]]) -> int:
            return sum(1 for i, a in enumerate(bx) for b in bx[i + 1:]
                       if a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3])

        assert overlaps(boxes(labels)) > 0  # one row, as before: they collide
        hidden = plots.place_labels(fig, labels)
        shown = [lb for lb in labels if lb.get_visible()]
        assert overlaps(boxes(shown)) == 0
        assert {round(lb.get_position()[1], 3) for lb in shown} == set(plots.LABEL_ROWS)
        assert "baseline" in [lb.get_text() for lb in shown]
        assert all(lb.get_text() == "trim" for lb in hidden) and 0 < len(hidden) < 12
    finally:
        plt.close(fig)
