"""The projection-fidelity check catches a broken projection at the real module shape, and passes a correct one.

The default comparison module of Qwen2.5-1.5B is the middle k_proj: d_in 1536, d_out 256, factor 32, so the
sketch has k_in 48 and k_out 8 rows. The gradients are random per-response sums of token outer products
(W_r = Σ_t δ_t x_tᵀ, like the real ones), so no model is needed. A projection scaled by 2 or by 1/2, or with
half its rows zeroed, must fail the check; the correct projection must pass it, for several seeds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from influence_job.inputs.config import ProjectionConfig
from influence_job.maths.diagnostics import sketch_relative_std, unprojected_comparison
from influence_job.maths.projection import projected_dims, projection_matrices

NAME = "model.layers.14.self_attn.k_proj"
D_IN, D_OUT, N, TOKENS = 1536, 256, 24, 48


@pytest.fixture(scope="module")
def gradients():
    gen = torch.Generator().manual_seed(0)
    delta = torch.randn(N, TOKENS, D_OUT, dtype=torch.float64, generator=gen)
    x = torch.randn(N, TOKENS, D_IN, dtype=torch.float64, generator=gen)
    return torch.einsum("rto,rti->roi", delta, x)  # (N, d_out, d_in)


def check(W, P_in, P_out, dims):
    projected = torch.einsum("ao,roi,bi->rab", P_out, W, P_in).reshape(N, -1)
    prompt_index = np.repeat(np.arange(N // 4), 4)
    accepted = np.tile([True, False], N // 2)
    res = unprojected_comparison(NAME, W.reshape(N, -1), projected, dims, prompt_index, accepted, 3.0, "rademacher")
    return res["fidelity"]


def half_rows_zeroed(P):
    P = P.clone()
    P[: P.shape[0] // 2] = 0
    return P


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_correct_projection_passes(gradients, seed):
    cfg = ProjectionConfig(factor=32, seed=seed)
    dims = projected_dims(D_IN, D_OUT, cfg)
    assert (dims.k_in, dims.k_out) == (48, 8)
    P_in, P_out = projection_matrices(NAME, dims, cfg)
    f = check(gradients, P_in, P_out, dims)
    assert f["passed"], f
    # far tighter than the rank-one worst case 3·sqrt(2/48 + 2/8 + 4/384) = 1.65, which could never fail low
    assert f["tolerance"] < 0.4


@pytest.mark.parametrize("broken", ["out x2", "out x0.5", "in x2", "in x0.5", "out half rows zeroed",
                                    "in half rows zeroed"])
def test_broken_projection_fails(gradients, broken):
    cfg = ProjectionConfig(factor=32, seed=0)
    dims = projected_dims(D_IN, D_OUT, cfg)
    P_in, P_out = projection_matrices(NAME, dims, cfg)
    side, what = broken.split(" ", 1)
    fix = {"x2": lambda P: 2 * P, "x0.5": lambda P: 0.5 * P, "half rows zeroed": half_rows_zeroed}[what]
    if side == "out":
        P_out = fix(P_out)
    else:
        P_in = fix(P_in)
    f = check(gradients, P_in, P_out, dims)
    assert not f["passed"], f


def test_bound_matches_the_sketch_variance_it_bounds():
    """Monte Carlo over sketches on a small shape: the bound is an upper bound and not loose by 10x."""
    gen = torch.Generator().manual_seed(1)
    W = torch.einsum("rto,rti->roi", torch.randn(6, 5, 12, dtype=torch.float64, generator=gen),
                     torch.randn(6, 5, 20, dtype=torch.float64, generator=gen))
    dims = projected_dims(20, 12, ProjectionConfig(factor=4))
    totals = []
    for seed in range(4000):
        P_in, P_out = projection_matrices("m", dims, ProjectionConfig(factor=4, seed=seed))
        totals.append(float(torch.einsum("ao,roi,bi->rab", P_out, W, P_in).square().sum()))
    empirical = np.std(totals) / float(W.square().sum())
    bound = sketch_relative_std(W.reshape(6, -1), dims)
    assert abs(np.mean(totals) / float(W.square().sum()) - 1) < 4 * empirical / np.sqrt(len(totals))  # unbiased
    assert empirical <= bound < 10 * empirical
