"""The HTML report: sections, labels, escaping of user data, charts, self-containment, and `plan report`."""

from __future__ import annotations

import html
import json
import os
import re
import stat

import pytest
from test_report_data import make_plan, make_profile, make_results, write_results

from planner.cli import main
from planner.errors import InputError
from planner.report import charts
from planner.report.render import render_html, render_report

SECTIONS = ("verdict", "context", "profile", "decision", "results", "recovery", "provenance")


def _section(page: str, name: str) -> str:
    start = page.index(f'<section id="{name}"')
    return page[start:page.index("</section>", start)]


def _text(fragment: str) -> str:
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", fragment)))


@pytest.fixture(scope="module")
def full_page() -> str:
    return render_html(make_results(), profile=make_profile(), plan=make_plan())


@pytest.fixture(scope="module")
def bare_page() -> str:
    return render_html(make_results())


def test_every_section_is_present_in_order(full_page):
    positions = [full_page.index(f'<section id="{name}"') for name in SECTIONS]
    assert positions == sorted(positions)


def test_verdict_names_the_best_measured_variant_with_both_labels(full_page):
    verdict = _text(_section(full_page, "verdict"))
    assert "candidate-1 (MLP channels −50% (activation); recovery distill (kd), 40 steps)" in verdict
    assert "p95 latency 114.6 ms → 91.7 ms, 1.25× faster measured on CPU Test CPU 9000, 2 threads" in verdict
    assert "1.42× projected to a100-80gb-sxm" in verdict
    assert "held-out perplexity +8.0% (budget +10%, the plan's quality budget)" in verdict
    assert "verdict-win" in full_page


def test_verdict_keeps_dense_when_no_variant_is_a_win():
    data = make_results()
    data["variants"][1]["quality"]["heldout_ppl"] = 12.0  # +20%: over the default +10% budget
    verdict = _text(_section(render_html(data), "verdict"))
    assert verdict.strip().startswith("Keep dense Keep the dense model: no pruned variant is at least 1.05×")
    assert "best measured: candidate-1, 1.25×, perplexity +20.0%" in verdict


def test_verdict_with_only_dense():
    data = make_results()
    data["variants"] = data["variants"][:1]
    assert "Only the dense baseline was measured" in _section(render_html(data), "verdict")


def test_results_table_has_dense_and_every_candidate(full_page):
    table = _section(full_page, "results")
    body = table[table.index('id="results-table"'):table.index("</table>", table.index('id="results-table"'))]
    rows = re.findall(r"<tr class=\"([^\"]*)\">\s*<td class=\"name\">([^<]*)</td>", body)
    assert rows == [("dense", "dense"), ("pruned chosen", "candidate-1"), ("pruned", "candidate-2")]
    text = _text(body)
    assert "10.800 +8.0%" in text and "91.7 ms" in text and "1.25× 1.42×" in text


def test_measured_and_projected_labels(full_page):
    assert full_page.count('class="tag tag-measured"') >= 8
    assert full_page.count('class="tag tag-projected"') >= 5
    results = _section(full_page, "results")
    assert "measured on CPU Test CPU 9000, 2 threads" in results and "projected to a100-80gb-sxm" in results
    assert "Parameter sparsity is not speed" in results


def test_profile_and_decision_sections_with_documents(full_page):
    profile = _section(full_page, "profile")
    assert profile.count('<svg class="chart"') == 2
    assert 'aria-label="Roofline of the model&#39;s ops, projected to a100-80gb-sxm"' in profile
    assert "memory-bound" in profile and "compute-bound" in profile
    assert 'id="categories-table"' in profile and "gate_proj" in profile
    decision = _text(_section(full_page, "decision"))
    assert "decode is memory-bound on the target" in decision
    assert "unstructured-no-dense-speedup" in decision
    assert "4 layers removed (block influence) predicted perplexity increase above the +10% budget" in decision


def test_missing_profile_and_plan_say_not_available(bare_page):
    assert "Not available: profile.json was not found" in _section(bare_page, "profile")
    decision = _section(bare_page, "decision")
    assert "Not available: plan.json was not found" in decision
    assert "candidate-2" in decision  # the candidates still come from results.json


def test_charts_are_inline_svg_with_unique_ids(full_page):
    assert full_page.count('<svg class="chart"') == 5
    ids = re.findall(r'\bid="([^"]+)"', full_page)
    assert len(ids) == len(set(ids))
    for ref in set(re.findall(r'url\(#([^)]+)\)|xlink:href="#([^"]+)"', full_page)):
        target = ref[0] or ref[1]
        assert f'id="{target}"' in full_page


def test_page_is_self_contained(full_page):
    assert "<script" not in full_page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", full_page)
    assert "@import" not in full_page and "url(http" not in full_page and "@font-face" not in full_page
    assert "<link" not in full_page


def test_user_data_is_escaped_everywhere():
    evil = "<script>alert(1)</script>"
    data = make_results(model=evil)
    data["variants"][1]["name"] = "cand<img src=x onerror=alert(2)>$x^2$"
    data["provenance"]["run_dir"] = "runs/<b>x</b>"
    page = render_html(data)
    assert "<script" not in page and "<img" not in page and "<b>x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "cand&lt;img src=x onerror=alert(2)&gt;$x^2$" in page  # in the tables
    # in the chart labels too, and `$...$` is not rendered as mathtext
    assert "cand&lt;img src=x onerror=alert(2)&gt;$x^" in _section(page, "results").split("<svg", 1)[1]


def test_rendering_is_deterministic_apart_from_the_timestamp(full_page):
    a = full_page
    b = render_html(make_results(), profile=make_profile(), plan=make_plan())
    strip = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC")
    assert strip.sub("", a) == strip.sub("", b)


def test_pareto_front():
    points = [(100.0, 0.0), (80.0, 8.0), (100.0, 4.0), (90.0, 9.0), (70.0, 20.0)]
    assert charts.pareto_front(points) == [4, 1, 0]


def test_speedup_chart_leaves_missing_bars_out():
    svg = charts.speedup_svg([{"label": "a", "predicted": 1.5, "measured": None}], predicted_label="p",
                             measured_label="m", metric="p95")
    assert "1.50x" in svg and svg.count("x</text>") == 1


def test_render_report_writes_a_readable_file(tmp_path):
    path = render_report(make_results(), tmp_path / "out" / "report.html")
    assert path.read_text(encoding="utf-8").startswith("<!doctype html>")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    with pytest.raises(InputError, match="is a folder"):
        render_report(make_results(), tmp_path)


# -- CLI ---------------------------------------------------------------------------------------------------------


def test_cli_report_picks_up_profile_and_plan_beside_results(tmp_path, capsys):
    results = write_results(tmp_path, make_results())
    (tmp_path / "plan.json").write_text(json.dumps(make_plan()))
    (tmp_path / "profile.json").write_text(make_profile().model_dump_json())
    assert main(["report", str(results)]) == 0
    page = (tmp_path / "report.html").read_text()
    assert "wrote" in capsys.readouterr().out
    assert "Not available: profile.json" not in page and "Not available: plan.json" not in page
    assert page.count('<svg class="chart"') == 5


def test_cli_report_with_corrupt_document_beside_results_still_renders(tmp_path):
    results = write_results(tmp_path, make_results())
    (tmp_path / "plan.json").write_text("{broken")
    out = tmp_path / "r.html"
    assert main(["report", str(results), "-o", str(out)]) == 0
    assert "Not available: plan.json beside results.json could not be read" in out.read_text()


def test_cli_report_bad_input_exits_2(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    results = write_results(tmp_path, make_results())
    assert main(["report", str(results), "--plan", str(tmp_path / "nope.json")]) == 2
    (tmp_path / "bad.json").write_text(json.dumps({"version": 1, "surprise": True}))
    assert main(["report", str(tmp_path / "bad.json")]) == 2
    assert "surprise" in capsys.readouterr().err


def test_profile_recorded_in_the_plan_is_used(tmp_path):
    profile_path = tmp_path / "cache" / "profile.json"
    profile_path.parent.mkdir()
    profile_path.write_text(make_profile().model_dump_json())
    plan = make_plan()
    plan["profile"] = {"path": str(profile_path)}
    page = render_html(make_results(), plan=plan)
    assert _section(page, "profile").count('<svg class="chart"') == 2
