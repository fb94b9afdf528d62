"""The typed results: what a run holds in memory is what its results.json reads back as, undefined numbers are
null in both, other non-finite numbers are refused, and a headline figure names a field that exists."""

from __future__ import annotations

import json
import math

import pytest
from conftest import exact_config
from pydantic import ValidationError

from influence_job.outputs.headline import HEADLINE, Figure
from influence_job.outputs.results import Fidelity, Summary, read_results, value_at
from influence_job.run.pipeline import run_job


@pytest.fixture(scope="module")
def written(tiny_model_dir, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("results") / "out"
    return run_job(exact_config(tiny_model_dir, tiny_data, out=out)).results, out


def test_the_result_in_memory_is_the_result_read_back(written):
    """Reports rendered during the run and `influence-job report` afterwards read the same object."""
    results, out = written
    assert read_results(out) == results


def test_an_undefined_statistic_is_null_in_memory_as_in_the_file():
    """A category without pairs has no mean: NaN from the statistics becomes None on entry, not only when written."""
    cell = Summary(mean=math.nan, std=math.inf, min=-math.inf, max=1.5)
    assert (cell.mean, cell.std, cell.min, cell.max) == (None, None, None, 1.5)
    assert Summary.model_validate_json(cell.model_dump_json()) == cell


def test_a_non_finite_number_where_one_is_required_is_refused_with_its_name():
    with pytest.raises(ValidationError, match="tolerance"):
        Fidelity(self_dot_relative_error=None, relative_std_bound=0.1, sigma=4.0, tolerance=math.nan, passed=True)


def test_a_figure_must_name_a_field_of_the_results():
    """The workflow publishes and the Pushgateway keeps figures by path: a misspelt one fails when defined."""
    with pytest.raises(ValueError, match="no field 'acc_acc'.*acc-acc"):
        Figure("similarity.hinv.per_prompt.acc_acc.dot.mean", "misspelt category")
    with pytest.raises(ValueError, match="no fields"):
        Figure("modules.name", "a path through a list")


def test_every_headline_figure_reads_its_value(written):
    """Each figure's value is the one at its path in the file, walked as plain JSON."""
    results, out = written

    def in_file(path: str):
        node = json.loads((out / "results.json").read_text())
        for key in path.split("."):
            node = node[key]
        return len(node) if isinstance(node, list) else node

    assert {f.path: f.value(results) for f in HEADLINE} == {f.path: in_file(f.path) for f in HEADLINE}
    assert value_at(results.model_copy(update={"unprojected_comparison": None}),
                    "unprojected_comparison.fidelity.passed") is None  # a section the run did not produce


def test_sections_list_their_names_in_the_files_order(written):
    results, out = written
    stats = results.similarity.raw
    assert list(stats.scopes()) == ["per_prompt", "cross_prompt", "all_prompt"]
    assert list(stats.per_prompt.cells()) == ["acc-acc", "rej-rej", "acc-rej"]
    assert list(stats.self_dot.cells()) == ["acc", "rej", "all"]
    assert list(results.similarity.methods()) == ["raw", "hinv"]
    assert list(results.modules[0].contribution.raw.pairs()) == ["acc-acc", "rej-rej", "acc-rej"]
