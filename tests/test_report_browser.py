"""The report in a real browser: headless Chromium (Debian's `chromium`) opens it, takes a screenshot and prints
it to PDF; a copy of the page with a small probe script appended reports through the DOM (`--dump-dom`) that the
verdict, the tables and the charts are there, that charts have a size, and that no element is wider than the page.

The report itself carries no script; the probe is added to a copy only for the test.
Set PLANNER_SCREENSHOT_DIR to keep the screenshots and the PDF.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_report_data import make_plan, make_profile, make_results

from planner.report.render import render_report

pytestmark = pytest.mark.browser

PROBE = """
<script>
(function () {
  var page = document.documentElement.clientWidth;
  var overflow = [];
  document.querySelectorAll("body *").forEach(function (el) {
    var r = el.getBoundingClientRect();
    if (r.width === 0 && r.height === 0) return;
    if (r.right > page + 1 || r.left < -1) {
      var cls = typeof el.className === "string" && el.className ? "." + el.className : "";
      overflow.push(el.tagName.toLowerCase() + (el.id ? "#" + el.id : "") + cls +
                    " [" + Math.round(r.left) + ", " + Math.round(r.right) + "]");
    }
  });
  var charts = Array.prototype.map.call(document.querySelectorAll("svg.chart"), function (s) {
    var r = s.getBoundingClientRect();
    return {label: s.getAttribute("aria-label"), width: Math.round(r.width), height: Math.round(r.height)};
  });
  var tables = {};
  document.querySelectorAll("table").forEach(function (t, i) {
    tables[t.id || ("table-" + i)] = t.querySelectorAll("tbody tr").length;
  });
  var result = {
    page_width: page,
    scroll_width: document.documentElement.scrollWidth,
    overflow: overflow.slice(0, 25),
    title: document.title,
    h1: document.querySelector("h1").textContent,
    verdict: (document.querySelector("#verdict .verdict-text") || {}).textContent || null,
    sections: Array.prototype.map.call(document.querySelectorAll("main > section"), function (s) { return s.id; }),
    headings: Array.prototype.map.call(document.querySelectorAll("main h2"), function (h) { return h.textContent; }),
    tables: tables,
    charts: charts,
    scripts: document.scripts.length,
    not_available: Array.prototype.map.call(document.querySelectorAll(".na"), function (e) { return e.textContent; })
  };
  document.body.setAttribute("data-probe", JSON.stringify(result));
})();
</script>
"""

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio"]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


CHROMIUM = find_chromium()
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)")


def chromium(tmp_path: Path, *args: str, timeout: int = 90) -> subprocess.CompletedProcess:
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.glob('chromium-profile-*')))}"
    cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def probe(tmp_path: Path, report: Path, width: int) -> dict:
    page = report.read_text(encoding="utf-8")
    probed = tmp_path / f"probe-{width}.html"
    probed.write_text(page.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    out = chromium(tmp_path, f"--window-size={width},2000", "--dump-dom", probed.as_uri())
    match = re.search(r'data-probe="([^"]*)"', out.stdout)
    assert match, f"the probe did not run; chromium said: {out.stderr[-2000:]}"
    return json.loads(html.unescape(match.group(1)))


def keep_dir(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("PLANNER_SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("browser-report")
    results = make_results(model="Smol<script>alert(1)</script>LM")
    return render_report(results, folder / "report.html", profile=make_profile(), plan=make_plan())


@needs_chromium
@pytest.mark.parametrize("width", [1280, 700])  # a desktop window; about an A4 page
def test_report_renders_every_section_without_overflow(tmp_path, report, width):
    result = probe(tmp_path, report, width)
    assert result["overflow"] == [], f"elements wider than the {width}px page: {result['overflow']}"
    assert result["scroll_width"] <= result["page_width"]
    assert result["sections"] == ["verdict", "context", "profile", "decision", "results", "recovery", "provenance"]
    assert result["verdict"].startswith("candidate-1 (MLP channels −50% (activation)")
    assert "1.25× faster measured on CPU Test CPU 9000" in result["verdict"]
    # the model name with markup is text, and the only script on the page is the probe
    assert result["h1"] == "Smol<script>alert(1)</script>LM"
    assert result["scripts"] == 1
    tables = result["tables"]
    assert tables["results-table"] == 3 and tables["latency-table"] == 3 and tables["size-table"] == 3
    assert tables["slices-table"] == 6 and tables["recovery-table"] == 1
    assert tables["phases-table"] == 2 and tables["categories-table"] == 11 and tables["ops-table"] == 10
    assert tables["candidates-table"] == 2 and tables["rules-table"] == 2 and tables["rejected-table"] == 1
    labels = [c["label"] for c in result["charts"]]
    assert labels == ["Kernel-category breakdown per phase, measured on cpu (Test CPU 9000, 2 threads)",
                      "Roofline of the model's ops, projected to a100-80gb-sxm",
                      "Quality against measured latency with the Pareto front",
                      "Predicted against measured speedup of p95 latency", "Recovery loss curve"]
    for chart in result["charts"]:
        assert chart["width"] >= 250 and chart["height"] >= 100, chart
    assert result["not_available"] == []  # every document was given: no section is left out


@needs_chromium
def test_screenshot_and_print(tmp_path, report):
    folder = keep_dir(tmp_path)
    png = folder / "report.png"
    pdf = folder / "report.pdf"
    out = chromium(tmp_path, "--window-size=1280,2000", f"--screenshot={png}", report.as_uri())
    assert png.is_file(), out.stderr[-2000:]
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1280, 2000)
    assert len(data) > 50_000  # a rendered page, not a blank one
    out = chromium(tmp_path, "--no-pdf-header-footer", f"--print-to-pdf={pdf}", report.as_uri())
    assert pdf.is_file(), out.stderr[-2000:]
    body = pdf.read_bytes()
    assert body[:5] == b"%PDF-"
    pages = len(re.findall(rb"/Type\s*/Page(?!s)", body))
    assert 2 <= pages <= 12, pages
