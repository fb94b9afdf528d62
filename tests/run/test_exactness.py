"""The engine against independent float64 autograd and explicit D×D solves (tests/reference.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import exact_config
from reference import build_reference, hinv_reference, influence_reference, raw_reference
from tolerances import MODEL_RTOL, SOLVE_RTOL, rel_err, solve_rtol

from influence_job.inputs.config import ProjectionConfig
from influence_job.run.pipeline import run_job

PROJECTIONS = {
    "none": {"kind": "none"},
    "rademacher": {"kind": "rademacher", "factor": 4, "seed": 3},
}


@pytest.fixture(scope="module")
def references(tiny_model_dir, tiny_data):
    cache = {}

    def get(projection: str, positions: str = "all", objective: str = "log_prob"):
        key = (projection, positions, objective)
        if key not in cache:
            cache[key] = build_reference(
                tiny_model_dir, tiny_data, ProjectionConfig(**PROJECTIONS[projection]), positions, objective
            )
        return cache[key]

    return get


def test_all_positions_gradient_is_the_weight_gradient(references):
    """Σ_t δ_t x_tᵀ over all positions is autograd's weight gradient (docs/method.md's definition)."""
    ref = references("none")
    for name in ref.full_grad:
        assert rel_err(ref.full_grad[name], ref.weight_grad[name]) < MODEL_RTOL


@pytest.mark.parametrize("projection", ["none", "rademacher"])
@pytest.mark.parametrize("source", ["token", "response"])
@pytest.mark.parametrize("scope", ["global", "per_prompt"])
@pytest.mark.parametrize("solver", ["kernel", "dense"])
def test_raw_and_hinv_match_autograd_and_explicit_solves(
    references, tiny_model_dir, tiny_data, projection, source, scope, solver
):
    ref = references(projection)
    cfg = exact_config(
        tiny_model_dir, tiny_data, projection=PROJECTIONS[projection],
        curvature={"source": source, "scope": scope, "solver": solver},
        influence={"enabled": False}, diagnostics={"curvature_similarity": False},
        compute={"token_chunk": 23},  # dense token Grams cross chunk boundaries
    )
    out = run_job(cfg, write=False)
    assert rel_err(out.raw, raw_reference(ref)) < MODEL_RTOL
    assert rel_err(out.hinv, hinv_reference(ref, source, scope)) < SOLVE_RTOL
    assert out.results.validation.passed


@pytest.mark.parametrize("positions", ["all", "response"])
def test_positions_option_and_objective(references, tiny_model_dir, tiny_data, positions):
    objective = "advantage_log_prob" if positions == "response" else "log_prob"
    ref = references("rademacher", positions, objective)
    cfg = exact_config(
        tiny_model_dir, tiny_data, projection=PROJECTIONS["rademacher"], positions=positions, objective=objective,
        curvature={"source": "token", "scope": "global"}, influence={"enabled": False},
    )
    out = run_job(cfg, write=False)
    assert rel_err(out.raw, raw_reference(ref)) < MODEL_RTOL
    assert rel_err(out.hinv, hinv_reference(ref, "token", "global")) < SOLVE_RTOL


def test_fixed_damping(references, tiny_model_dir, tiny_data):
    ref = references("rademacher")
    cfg = exact_config(tiny_model_dir, tiny_data, projection=PROJECTIONS["rademacher"],
                       curvature={"source": "response", "scope": "global", "damping": 0.5})
    out = run_job(cfg, write=False)
    # A fixed λ bounds cond(H) by 1 + λ_max(GᵀG)/λ, not by the automatic damping's 1 + 10·D.
    cond = max(1 + float(torch.linalg.matrix_norm(G, 2)) ** 2 / 0.5 for G in ref.G.values())
    assert rel_err(out.hinv, hinv_reference(ref, "response", "global", damping=0.5)) < solve_rtol(cond)


@pytest.mark.parametrize(
    "source,aggregate,exclude_self,solver",
    [("token", "sum", False, "kernel"), ("token", "mean", True, "dense"), ("response", "advantage", False, "auto"),
     ("token", "advantage", True, "dense"), ("response", "mean", False, "dense")],
)
def test_token_influence_matches_brute_force(references, tiny_model_dir, tiny_data, source, aggregate,
                                             exclude_self, solver):
    ref = references("rademacher")
    cfg = exact_config(
        tiny_model_dir, tiny_data, projection=PROJECTIONS["rademacher"],
        curvature={"source": source, "solver": solver},
        influence={"aggregate": aggregate, "exclude_self": exclude_self},
    )
    out = run_job(cfg, write=False)
    rows = out.rows
    expected = influence_reference(ref, source, aggregate, exclude_self)
    off = rows["token_offsets"]
    got = [rows["scores"][off[i]:off[i + 1]] for i in range(len(expected))]
    skipped = rows["skipped"]
    assert list(skipped) == [bool(np.isnan(e).all()) for e in expected]
    assert skipped.sum() == 3  # prompt "c" is all-accepted: its rows are NaN and counted
    scored = ~skipped
    assert rel_err(np.concatenate([g for g, s in zip(got, scored, strict=True) if s]),
                   np.concatenate([e for e, s in zip(expected, scored, strict=True) if s])) < SOLVE_RTOL
    for g, s in zip(got, skipped, strict=True):
        assert np.isnan(g).all() == s
    # entropy and per-row identity columns
    assert rel_err(rows["entropy"], np.concatenate(ref.entropy)) < MODEL_RTOL
    assert list(rows["accepted"]) == list(ref.accepted)
    assert out.results.influence.skipped_prompts == ["c"]


def test_log_prob_matches(references, tiny_model_dir, tiny_data, tmp_path):
    ref = references("none")
    cfg = exact_config(tiny_model_dir, tiny_data, out=tmp_path / "o", projection=PROJECTIONS["none"])
    run_job(cfg)
    with np.load(tmp_path / "o" / "similarity.npz") as z:
        assert rel_err(z["log_prob"], ref.log_prob) < MODEL_RTOL
        assert list(z["accepted"]) == list(ref.accepted)


def test_unprojected_comparison_is_exact(references, tiny_model_dir, tiny_data):
    """The comparison's 'exact' side equals autograd's Gram of full weight gradients."""
    ref = references("rademacher")
    cfg = exact_config(tiny_model_dir, tiny_data, projection=PROJECTIONS["rademacher"],
                       diagnostics={"unprojected_module": "model.layers.1.self_attn.k_proj"})
    res = run_job(cfg, write=False).results.unprojected_comparison
    W = ref.weight_grad["model.layers.1.self_attn.k_proj"]
    gram = (W @ W.T).numpy()
    assert res.unprojected.self_dot.all.mean == pytest.approx(np.diag(gram).mean(), rel=MODEL_RTOL)
    Gp = ref.G["model.layers.1.self_attn.k_proj"]
    assert res.projected.self_dot.all.mean == pytest.approx(
        float(torch.diag(Gp @ Gp.T).mean()), rel=MODEL_RTOL)


def test_module_contributions_match_per_module_autograd(references, tiny_model_dir, tiny_data):
    """results.json's per-module contribution (what report.html's "where" section draws) against each module's own
    G_m G_mᵀ and G_m H_m⁻¹ G_mᵀ from autograd and explicit solves, averaged over pairs by a plain loop. An
    entry-wise error of at most rtol·‖M_m‖ (the matrices' norm-wise bound) bounds the error of any mean of
    entries by the same amount."""
    from reference import curvature, pair_loop_stats

    ref = references("rademacher")
    out = run_job(exact_config(tiny_model_dir, tiny_data, projection=PROJECTIONS["rademacher"],
                               curvature={"source": "token", "scope": "global"}), write=False)
    n = len(ref.prompt_index)
    by_name = {m.name: m.contribution.as_json() for m in out.results.modules}
    assert set(by_name) == set(ref.G)
    for name, G in ref.G.items():
        H = curvature(ref, name, list(range(n)), "token")
        for method, M, rtol in (("raw", G @ G.T, MODEL_RTOL),
                                ("hinv", G @ torch.linalg.solve(H, G.T), SOLVE_RTOL)):
            M = M.numpy()
            cells = pair_loop_stats(M, ref.prompt_index, ref.accepted)
            bound = rtol * np.linalg.norm(M)
            for cat in ("acc-acc", "rej-rej", "acc-rej"):
                if ("per_prompt", cat) not in cells:  # no such pair in the data: no mean
                    assert by_name[name][method][cat] is None
                    continue
                expected = np.mean([dot for dot, _ in cells[("per_prompt", cat)]])
                assert abs(by_name[name][method][cat] - expected) <= bound, (name, method, cat)
            assert abs(by_name[name][method]["self"] - np.mean(np.diag(M))) <= bound
