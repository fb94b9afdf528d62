"""One schedule: the planner prices exactly the factorisations the engine runs.

Both read a module's factorisations from maths.schedule; these tests run the engine (inside a whole run, where it
is the subject: the sizes come from the capture's kept rows) and compare, module by module, what it executed —
each factorisation's size, right-hand sides, quadratic form and route — with the planner's list for the same
configuration and data. The planner's CPU profile without measured rates picks routes by flops, as the engine does.
"""

from __future__ import annotations

import pytest
from conftest import exact_config

from influence_job.maths.schedule import Factorisation, mixed_label, module_schedule
from influence_job.planning.plan import make_plan
from influence_job.planning.profiles import cpu_profile
from influence_job.planning.workload import workload
from influence_job.run import pipeline, stages

QUIET = {"curvature_similarity": False, "unprojected_module": None}


@pytest.mark.parametrize(("source", "scope", "influence", "solver"), [
    ("token", "global", True, "auto"),
    ("token", "per_prompt", False, "auto"),
    ("response", "global", False, "kernel"),
    ("response", "per_prompt", True, "auto"),
])
def test_the_planner_lists_what_the_engine_executed(tiny_model_dir, tiny_data, monkeypatch, source, scope, influence,
                                                    solver):
    cfg = exact_config(tiny_model_dir, tiny_data, curvature={"source": source, "scope": scope, "solver": solver},
                       influence={"enabled": influence}, diagnostics=QUIET)
    executed, real = [], stages.process_module

    def recording(mf, layout, c):
        res = real(mf, layout, c)
        executed.append((mf.name, res.executed))
        return res

    monkeypatch.setattr(stages, "process_module", recording)
    pipeline.run_job(cfg, write=False)
    plan = make_plan(cfg, workload(cfg), cpu_profile(measure=False), suggest=False)
    assert executed == [(m.name, m.factorisations) for m in plan.modules]
    assert executed and all(executed_ for _, executed_ in executed)


def test_the_schedule_follows_the_scope_and_the_token_scores():
    """Global scope: one factorisation over every row, forming the quadratic form for all N; per-prompt scope: one
    per prompt against all N; token scores add per-prompt solves (their own responses) to a global run."""
    bounds, offsets = [(0, 2), (2, 5)], [0, 3, 7, 8, 12, 20]
    whole = Factorisation((0, 20), (0, 5), n_rhs=5, quad=True, prompt=None, scores=False)
    assert module_schedule(bounds, offsets, "global", False) == [whole]
    assert module_schedule(bounds, offsets, "global", True) == [
        whole, Factorisation((0, 7), (0, 2), 2, False, 0, True), Factorisation((7, 20), (2, 5), 3, False, 1, True)]
    assert module_schedule(bounds, offsets, "per_prompt", False) == [
        Factorisation((0, 7), (0, 2), 5, True, 0, False), Factorisation((7, 20), (2, 5), 5, True, 1, False)]
    assert [f.size for f in module_schedule(bounds, offsets, "per_prompt", True)] == [7, 13]
    assert mixed_label(["dense", "kernel", "dense"]) == "mixed(dense,kernel)" and mixed_label(["kernel"]) == "kernel"
