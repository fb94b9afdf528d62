"""The memory plan, checked by tracking the tensors themselves: a module's D×D curvature factorisations and
its per-position factors are released before the next module is processed, so memory holds one module's
working set at a time rather than every module's."""

from __future__ import annotations

import weakref

from conftest import exact_config

from influence_job.maths import engine
from influence_job.run import pipeline, stages


def test_one_module_working_set_alive_at_a_time(monkeypatch, tiny_model_dir, tiny_data):
    earlier: list[weakref.ref] = []  # D×D factors and per-position factors of modules already processed
    current: list[weakref.ref] = []
    per_module: list[tuple[str, int, int]] = []
    real_factor, real_process = engine.factor, stages.process_module

    def tracking_factor(rows, *args, **kwargs):
        solver = real_factor(rows, *args, **kwargs)
        assert solver.route == "dense" and solver.L.shape == (rows.D, rows.D)
        current.append(weakref.ref(solver.L))
        return solver

    def tracking_process(mf, layout, cfg):
        leaked = [ref for ref in earlier if ref() is not None]
        assert not leaked, f"{len(leaked)} tensors of earlier modules still alive when {mf.name} starts"
        factors = [weakref.ref(mf.U), weakref.ref(mf.V)]
        result = real_process(mf, layout, cfg)
        per_module.append((mf.name, mf.dims.D, len(current)))
        earlier.extend(current + factors)
        current.clear()
        return result

    monkeypatch.setattr(engine, "factor", tracking_factor)
    monkeypatch.setattr(stages, "process_module", tracking_process)
    cfg = exact_config(
        tiny_model_dir, tiny_data,
        curvature={"source": "token", "scope": "global", "solver": "dense"},
        influence={"enabled": True}, diagnostics={"curvature_similarity": False, "unprojected_module": None},
    )
    out = pipeline.run_job(cfg, write=False)
    assert out.results.validation.passed
    n_prompts = out.results.n_prompts
    # Every module factored once globally and once per prompt (the influence rows), all dense D×D.
    assert len(per_module) == len(out.results.modules) > 1
    assert all(count == 1 + n_prompts for _, _, count in per_module)
    assert [ref for ref in earlier if ref() is not None] == []
