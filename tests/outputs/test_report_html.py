"""report.html: it renders offline in a real browser (Debian's headless Chromium, driven by Playwright), the
numbers it embeds are the output files' numbers, its token view follows the scores, and a 1,000-response
output stays small by aggregating. Screenshots of each section are kept under test-artifacts/report-html/ for
a person to look at."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
from pages import blank_stats, open_page

from influence_job.cli.main import main
from influence_job.outputs.number_format import column_format, format_rows
from influence_job.outputs.regenerate import read_output
from influence_job.outputs.report_html import AGGREGATE_ABOVE, render_html
from influence_job.outputs.results import Results

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "report-html"
SECTIONS = ("verdict", "glance", "heatmaps", "distributions", "where", "tokens", "diagnostics", "performance")
# The size a mailed report should stay under; README states what the default run and 1,000 responses measure.
SIZE_BOUND = 3 * 2**20


@pytest.fixture(scope="module")
def default_output(tmp_path_factory):
    """The default run (built-in tiny model, bundled data, CPU), through the CLI."""
    out = tmp_path_factory.mktemp("report") / "default"
    assert main(["run", "-q", "--output", str(out)]) == 0
    return out


def embedded(page: str) -> dict:
    match = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S)
    return json.loads(match.group(1).replace("<\\/", "</"))


def f64(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f8")


def test_default_report_is_written_and_small(default_output):
    size = (default_output / "report.html").stat().st_size
    assert size < SIZE_BOUND
    print(f"report.html of the default run: {size / 2**10:.0f} KiB")


def test_embedded_numbers_are_the_output_files_numbers(default_output):
    page = (default_output / "report.html").read_text()
    data = embedded(page)
    results = json.loads((default_output / "results.json").read_text())
    with np.load(default_output / "similarity.npz") as z:
        raw, hinv, prompt_index, accepted = z["raw"], z["hinv"], z["prompt_index"], z["accepted"]
    n = len(prompt_index)
    hm = data["heatmap"]
    assert data["n"] == n and not hm["aggregated"]
    np.testing.assert_array_equal(f64(hm["raw"]).reshape(n, n), raw)  # bit for bit
    np.testing.assert_array_equal(f64(hm["hinv"]).reshape(n, n), hinv)
    assert data["similarity"] == results["similarity"]
    assert data["prompt_index"] == prompt_index.tolist() and data["accepted"] == accepted.tolist()
    assert data["contributions"] == [{"name": m["name"], **m["contribution"]} for m in results["modules"]]
    order = np.array(hm["order"])
    assert sorted(order) == list(range(n)) and np.all(np.diff(prompt_index[order]) >= 0)  # grouped by prompt
    # The sentences quote results.json's numbers in the report's notation.
    acc_rej = results["similarity"]["hinv"]["per_prompt"]["acc-rej"]["cos"]["mean"]
    assert f"mean cosine {column_format([acc_rej])(acc_rej)}" in page


def test_report_renders_offline_in_chromium(default_output, browser):
    """No request leaves the file, no console error, every section draws something; the hover and the cos/dot
    switch work."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    context, page, requests, errors = open_page(browser, default_output / "report.html")
    assert errors == []
    assert {r for r in requests if not r.startswith("data:")} == {(default_output / "report.html").resolve().as_uri()}
    for section in SECTIONS:
        shot = page.locator(f"#{section}").screenshot(path=str(ARTIFACTS / f"{section}.png"))
        spread, inked = blank_stats(shot)
        assert spread > 10 and inked > 0.02, (section, spread, inked)
    # Hover the middle of the RAW cosine heatmap: the tooltip names a pair and its values.
    heat = page.locator('img.heatmap[data-method="raw"][data-kind="cos"]')
    heat.scroll_into_view_if_needed()
    box = heat.bounding_box()
    heat.hover(position={"x": box["width"] * 0.5, "y": box["height"] * 0.45})
    tip = page.locator("#hover")
    assert tip.is_visible() and "RAW cos" in tip.inner_text() and "HINV cos" in tip.inner_text()
    page.locator("input[name=hm][value=dot]").check()
    assert page.locator("#heatmaps .pane.dot").is_visible() and not page.locator("#heatmaps .pane.cos").is_visible()
    # Printed: the controls go, both heatmap panes (cos and dot) show.
    page.emulate_media(media="print")
    assert not page.locator("#heatmaps .controls").is_visible()
    assert page.locator("#heatmaps .pane.cos").is_visible() and page.locator("#heatmaps .pane.dot").is_visible()
    assert len(page.pdf()) > 100_000
    assert errors == []
    context.close()


def test_token_view_colours_follow_the_scores_and_skipped_prompts_say_why(default_output, browser):
    """Every response, selected in the page: each token's colour has its score's sign (red positive, blue
    negative, grey unscored) and its score is the npz's; a skipped prompt's response says why."""
    with np.load(default_output / "influence_rows.npz") as z:
        scores, offsets, prompt_id = z["scores"], z["token_offsets"], z["prompt_id"]
    context, page, _, errors = open_page(browser, default_output / "report.html")
    scale = embedded((default_output / "report.html").read_text())["tokens"]["scale"]
    signs = {"+": 0, "-": 0, "none": 0}
    for r in range(len(offsets) - 1):
        page.select_option("#prompt-select", str(prompt_id[r]))
        page.select_option("#response-select", str(r))
        spans = page.eval_on_selector_all("#response-view .t", "els => els.map(e => [e.dataset.s, "
                                          "getComputedStyle(e).backgroundColor])")
        expected = scores[offsets[r]:offsets[r + 1]]
        assert len(spans) == len(expected)
        for (shown, background), score in zip(spans, expected, strict=True):
            rgb = tuple(map(int, re.match(r"rgb\((\d+), (\d+), (\d+)\)", background).groups()))
            if np.isnan(score):
                assert shown == "NaN" and rgb == (238, 238, 238)
                signs["none"] += 1
            else:
                assert float(shown) == score  # the exact float64 from the npz
                if rgb[0] != rgb[2]:  # a hue: red for positive, blue for negative
                    assert (rgb[0] > rgb[2]) == (score > 0), (score, rgb)
                    signs["+" if score > 0 else "-"] += 1
                else:  # neutral grey: only a score too small to show (under 1 % of the colour scale)
                    assert abs(score) < 0.01 * scale, (score, rgb)
        view = page.locator("#response-view").inner_text()
        if str(prompt_id[r]) == "p3":
            assert "Not scored: all 4 responses accepted: no rejected response to contrast with." in view
        if str(prompt_id[r]) == "p4":
            assert "Not scored: all 4 responses rejected: no accepted response to contrast with." in view
    assert signs["+"] and signs["-"] and signs["none"] == int(np.isnan(scores).sum()) > 0
    page.select_option("#prompt-select", "p3")
    page.locator("#tokens").screenshot(path=str(ARTIFACTS / "tokens-skipped-prompt.png"))
    assert errors == []
    context.close()
    page_text = (default_output / "report.html").read_text()
    assert "<b>p3</b>: all 4 responses accepted: no rejected response to contrast with" in page_text


def synthetic_output(results: Results, n_prompts: int = 250, per_prompt: int = 4, tokens_each: int = 12, seed: int = 0):
    """A 1,000-response output built from a real run's results.json: random but valid PSD matrices, one row per
    response with scores and entropies (the page's content, not the engine, is under test here)."""
    rng = np.random.default_rng(seed)
    n = n_prompts * per_prompt
    prompt_index = np.repeat(np.arange(n_prompts), per_prompt)
    accepted = rng.random(n) < 0.5
    G = rng.standard_normal((n, 40)) + 0.5 * rng.standard_normal((n_prompts, 40))[prompt_index]
    sim = {"raw": G @ G.T, "hinv": (G / 3) @ (G / 3).T, "prompt_index": prompt_index, "accepted": accepted}
    offsets = np.arange(n + 1) * tokens_each
    rows = {"response_index": np.arange(n), "prompt_index": prompt_index,
            "prompt_id": np.array([f"q{p}" for p in prompt_index]), "response_id": np.array([f"q{p}/{i % per_prompt}"
                                                                                           for i, p in
                                                                                           enumerate(prompt_index)]),
            "reward": accepted.astype(float), "accepted": accepted, "skipped": np.zeros(n, dtype=bool),
            "n_tokens": np.full(n, tokens_each), "score_sum": np.zeros(n), "token_offsets": offsets,
            "token_ids": rng.integers(0, 256, offsets[-1]), "scores": rng.standard_normal(offsets[-1]),
            "entropy": rng.random(offsets[-1]) * 5}
    tokens = [[chr(97 + int(t) % 26) for t in rows["token_ids"][offsets[i]:offsets[i + 1]]] for i in range(n)]
    big = results.model_copy(update={"n_responses": n, "n_prompts": n_prompts, "n_accepted": int(accepted.sum()),
                                     "n_rejected": int((~accepted).sum()), "n_response_tokens": int(offsets[-1])})
    return big, sim, rows, tokens


def test_a_thousand_responses_render_aggregated_within_the_size_bound(default_output):
    results, _, _, _ = read_output(default_output)
    big, sim, rows, tokens = synthetic_output(results)
    page = render_html(big, sim, rows, tokens)
    size = len(page.encode())
    print(f"report.html for 1,000 responses: {size / 2**10:.0f} KiB")
    assert len(sim["prompt_index"]) > AGGREGATE_ABOVE and size < SIZE_BOUND
    data = embedded(page)["heatmap"]
    assert data["aggregated"]
    assert "each cell is the mean over a block of responses" in page
    # Two blocks recomputed here from their labels ("prompts a–b"): the accepted responses of the 8th run of
    # prompts against the rejected ones of the 11th.
    groups = data["groups"]
    G = len(groups)
    assert G <= 128 and sum(g["size"] for g in groups) == len(sim["prompt_index"])

    def members(group):
        first, last = map(int, re.findall(r"\d+", group["label"])[-2:])
        return np.flatnonzero((sim["prompt_index"] >= first) & (sim["prompt_index"] <= last)
                              & (sim["accepted"] == group["accepted"]))

    labels = list(dict.fromkeys(g["label"] for g in groups))
    a = next(k for k, g in enumerate(groups) if g["label"] == labels[7] and g["accepted"])
    b = next(k for k, g in enumerate(groups) if g["label"] == labels[10] and not g["accepted"])
    expected = sim["raw"][np.ix_(members(groups[a]), members(groups[b]))].mean()
    assert f64(data["raw_dot"]).reshape(G, G)[a, b] == pytest.approx(expected, rel=1e-12)
    cos = sim["raw"] / np.sqrt(np.outer(np.diag(sim["raw"]), np.diag(sim["raw"])))
    ia = members(groups[a])
    within = cos[np.ix_(ia, ia)][~np.eye(len(ia), dtype=bool)].mean()  # self-pairs left out
    assert f64(data["raw_cos"]).reshape(G, G)[a, a] == pytest.approx(within, rel=1e-12)


def test_report_command_regenerates_both_reports(default_output, tmp_path, capsys):
    before = (default_output / "report.html").read_bytes()
    (default_output / "report.html").unlink()
    assert main(["report", str(default_output), "--format", "html"]) == 0
    assert (default_output / "report.html").read_bytes() == before  # the same page from the same files
    assert main(["report", str(tmp_path)]) == 2
    assert "is not an influence-job output directory" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "absent")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_each_table_column_uses_one_notation(default_output):
    assert format_rows([[8.703e-4], [0.008061]]) == [["8.703e-04"], ["8.061e-03"]]
    assert format_rows([[0.7612], [0.4414], [12.5]]) == [["0.7612"], ["0.4414"], ["12.5000"]]
    report = (default_output / "report.md").read_text()
    tables = re.findall(r"((?:^\|.*\|\n)+)", report, re.M)
    assert tables
    for block in tables:
        rows = [re.split(r"(?<!\\)\|", line)[1:-1] for line in block.strip().splitlines()[2:]]
        for column in zip(*rows, strict=True):
            cells = [c.strip() for c in column if re.fullmatch(r"\s*-?\d[\d.,]*(e[+-]\d+)?\s*", c)]
            kinds = {"e" in c for c in cells if "." in c}
            assert len(kinds) <= 1, (block, column)
    assert "D×D float64 MiB" not in report and "| 0 |" not in report.split("## RAW")[0]
    assert "exclude_self False" not in report and "contribution included" in report
    assert "of which: solves / rest" in report and "| phase diagnostics |" in report  # the time is explained
    assert "| mean score sum, accepted |" in report


def test_no_figure_label_is_cut_off(default_output, caplog):
    """Every figure of the default page and of a 1,000-response page keeps its labels inside the image (the check
    itself is shown to catch a colour bar whose labels run off the right edge). Runs skip the check; tests turn it
    on."""
    import logging

    from matplotlib.figure import Figure

    from influence_job.outputs.figures import checking_clipping, clipped_texts, png

    fig = Figure(figsize=(4.6, 4.6))
    image = fig.add_axes((0.1, 0.04, 0.78, 0.78)).imshow(np.arange(25.0).reshape(5, 5) * 6000)
    fig.colorbar(image, cax=fig.add_axes((0.9, 0.04, 0.025, 0.78)))
    assert clipped_texts(fig)  # the layout report.html once had: '60000' drawn as '6000'
    results, sim, rows, tokens = read_output(default_output)
    with caplog.at_level(logging.WARNING, logger="influence_job.outputs.figures"), checking_clipping():
        render_html(results, sim, rows, tokens)
        render_html(*synthetic_output(results))
        assert [r.getMessage() for r in caplog.records] == []
        png(fig)  # the bad layout above, through the same path: it is reported
        reported = len(caplog.records)
        assert reported and all("is cut off" in r.getMessage() for r in caplog.records)
    png(fig)  # a run does not pay for the check (it draws every figure twice)
    assert len(caplog.records) == reported
