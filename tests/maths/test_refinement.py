"""Cheaper dense Gram products (compute.gram_dtype float32 / tf32) with float64 iterative refinement: the solves
are float64 solves of the exact curvature, checked against a float64 Gram's; and when refinement cannot work
(a Gram too far from H, or not positive definite) the factorisation falls back to float64 products."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from conftest import exact_config
from tolerances import SOLVE_RTOL, rel_err

from influence_job.maths import rows as curvature_rows
from influence_job.maths.curvature import factor
from influence_job.maths.routes import resolve_gram_dtype
from influence_job.maths.rows import TokenRows, token_gram_width
from influence_job.run import pipeline


def round_tf32_(x: torch.Tensor) -> torch.Tensor:
    """TF32's 10-bit mantissa, round to nearest (ties away): what a tensor core does to its float32 inputs."""
    x.view(torch.int32).add_(0x1000).bitwise_and_(~0x1FFF)
    return x


@pytest.fixture
def rows_and_rhs():
    gen = torch.Generator().manual_seed(1)
    scale_u = 1.0 / torch.arange(1, 25, dtype=torch.float64)  # a decaying spectrum, as curvatures have
    U = torch.randn(1000, 24, generator=gen, dtype=torch.float64) * scale_u
    V = torch.randn(1000, 16, generator=gen, dtype=torch.float64)
    A = torch.randn(6, 24 * 16, generator=gen, dtype=torch.float64)
    return U, V, A


@pytest.mark.parametrize("products", ["float32", "tf32-emulated"])
def test_refined_solves_are_float64_solves(rows_and_rhs, products, monkeypatch):
    U, V, A = rows_and_rhs
    exact = factor(TokenRows(U, V, gram_dtype="float64"), "auto", "dense", n_rhs=6)
    if products == "tf32-emulated":
        real = curvature_rows.pair_rows
        monkeypatch.setattr(curvature_rows, "pair_rows", lambda *a: round_tf32_(real(*a)))
    cheap = factor(TokenRows(U, V, gram_dtype="float32"), "auto", "dense", n_rhs=6)
    assert cheap.refine and not exact.refine
    # Unrefined, the cheaper factor is visibly off (this is what refinement removes) ...
    unrefined = torch.cholesky_solve(A.T, cheap.L).T
    assert rel_err(unrefined, exact.solve(A)) > 100 * SOLVE_RTOL
    # ... refined, it is a float64 solve: D = 384, so cond(H) ≤ 1 + 10·D and SOLVE_RTOL applies.
    assert rel_err(cheap.solve(A), exact.solve(A)) <= SOLVE_RTOL
    assert rel_err(cheap.quad(A), exact.quad(A)) <= SOLVE_RTOL
    assert 0 < cheap.refinements <= 2 * 10  # two solves, a handful of steps each


def test_the_quadratic_form_is_refined_to_second_order(rows_and_rhs, monkeypatch):
    """HINV's A H⁻¹ Aᵀ from emulated-TF32 products against an explicit float64 D×D solve of explicit rows: a float64
    result in fewer exact applications of H than the solves take, because its error is quadratic in theirs."""
    U, V, A = rows_and_rhs
    R = (U[:, :, None] * V[:, None, :]).reshape(U.shape[0], -1)
    H = R.T @ R
    H.diagonal().add_(0.1 * float(H.trace()) / H.shape[0])  # the automatic damping, from docs/method.md
    want = A @ torch.linalg.solve(H, A.T)
    real = curvature_rows.pair_rows
    monkeypatch.setattr(curvature_rows, "pair_rows", lambda *a: round_tf32_(real(*a)))
    cheap = factor(TokenRows(U, V, gram_dtype="tf32"), "auto", "dense", n_rhs=6)
    got = cheap.quad(A)
    quad_steps = cheap.refinements
    assert rel_err(got, want) <= SOLVE_RTOL
    assert torch.equal(got, got.T)
    solved = cheap.solve(A)
    solve_steps = cheap.refinements - quad_steps
    assert rel_err(solved, torch.linalg.solve(H, A.T).T) <= SOLVE_RTOL
    assert 0 < quad_steps < solve_steps


def test_auto_gram_products_are_tf32_where_they_save_time():
    """'auto': on a GPU TF32 when the products it saves (3/4 of a float64 Gram's) outweigh its refinement steps —
    the default diagnostic's MLP modules, global and per prompt — float64 where they do not (the tiny default's
    modules, D = 128, 32 responses) and always on a CPU; a fixed setting is kept."""
    mlp = dict(D=13_440, gram_width=token_gram_width(280, 48))
    assert resolve_gram_dtype("auto", True, 89_088, n_rhs=96, quad=True, **mlp) == "tf32"
    assert resolve_gram_dtype("auto", True, 7_424, n_rhs=8, quad=False, **mlp) == "tf32"
    tiny = dict(D=128, gram_width=token_gram_width(8, 16))
    assert resolve_gram_dtype("auto", True, 2_254, n_rhs=32, quad=True, **tiny) == "float64"
    assert resolve_gram_dtype("auto", False, 89_088, n_rhs=96, quad=True, **mlp) == "float64"
    assert resolve_gram_dtype("float32", False, 2_254, n_rhs=32, quad=True, **tiny) == "float32"


@pytest.mark.parametrize("use", ["solve", "quad"])
def test_a_stalled_refinement_falls_back_to_float64(rows_and_rhs, monkeypatch, caplog, use):
    """A preconditioner too far from H (here 0.3 × the Gram) makes the corrections grow: the solver says so and
    factors the float64 Gram instead."""
    U, V, A = rows_and_rhs
    exact = factor(TokenRows(U, V, gram_dtype="float64"), "auto", "dense", n_rhs=6)
    real = TokenRows.gram
    monkeypatch.setattr(TokenRows, "gram", lambda self: real(self) * (0.3 if self.gram_dtype != "float64" else 1.0))
    cheap = factor(TokenRows(U, V, gram_dtype="float32"), "auto", "dense", n_rhs=6)
    with caplog.at_level(logging.WARNING, logger="influence_job.maths.curvature"):
        got = getattr(cheap, use)(A)
    assert "stalled" in caplog.text and not cheap.refine
    assert rel_err(got, getattr(exact, use)(A)) <= SOLVE_RTOL


def test_a_gram_that_is_not_positive_definite_falls_back_to_float64(rows_and_rhs, monkeypatch, caplog):
    U, V, A = rows_and_rhs
    exact = factor(TokenRows(U, V, gram_dtype="float64"), "auto", "dense", n_rhs=6)
    real = TokenRows.gram
    monkeypatch.setattr(TokenRows, "gram", lambda self: real(self) * (-1.0 if self.gram_dtype != "float64" else 1.0))
    with caplog.at_level(logging.WARNING, logger="influence_job.maths.curvature"):
        cheap = factor(TokenRows(U, V, gram_dtype="float32"), "auto", "dense", n_rhs=6)
    assert "not positive definite" in caplog.text and cheap.ok and not cheap.refine
    assert rel_err(cheap.solve(A), exact.solve(A)) <= SOLVE_RTOL


def test_a_run_with_float32_gram_products_gives_the_float64_results(tiny_model_dir, tiny_data):
    """The whole job (dense routes forced, influence rows on): HINV and the token scores with float32 Gram
    products and refinement against float64 Gram products."""
    runs = {}
    for dtype in ("float64", "float32"):
        cfg = exact_config(tiny_model_dir, tiny_data, curvature={"solver": "dense"},
                           compute={"gram_dtype": dtype}, diagnostics={"curvature_similarity": False})
        runs[dtype] = pipeline.run_job(cfg, write=False)
    a, b = runs["float32"], runs["float64"]
    assert rel_err(a.hinv, b.hinv) <= SOLVE_RTOL
    # Each module's record says which products its dense Gram used and how many refinement steps it took.
    cheap = [m for m in a.results.modules if m.gram_dtype is not None]
    assert cheap and all(m.gram_dtype == "float32" and m.refinement_steps > 0 for m in cheap)
    assert all(m.refinement_steps == 0 for m in b.results.modules)
    ok = np.isfinite(b.rows["scores"])
    assert rel_err(a.rows["scores"][ok], b.rows["scores"][ok]) <= SOLVE_RTOL
