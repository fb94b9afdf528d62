"""Diagnostics beside the main result: projection fidelity and curvature similarity across prompts."""

from __future__ import annotations

import math

import numpy as np
import torch

from influence_job.curvature import damping_value
from influence_job.engine import Layout, module_rows
from influence_job.similarity import SCOPES, matrix_stats


def sketch_relative_std(exact: torch.Tensor, dims) -> float:
    """Bound on the relative standard deviation of m = Σ_r ‖P_out W_r P_inᵀ‖²_F as an estimate of its mean
    Σ_r ‖W_r‖²_F, for these gradients W_r (rows of ``exact``, d_out × d_in each) and independent two-sided
    Rademacher sketches with k_out and k_in rows. The responses share one sketch, so their errors are
    correlated: the bound is for the total (and so for the mean self-dot), not per response.

    With s_a, t_b the sign vectors of the sketches' rows, m = Σ_{a,b} f(s_a, t_b) / (k_out·k_in) with
    f(s, t) = Σ_r (sᵀ W_r t)², and independence between rows gives

        Var m = [Var f + (k_in − 1)·c_out + (k_out − 1)·c_in] / (k_out·k_in),

    c_out = Var_s(sᵀ C s) = 2(‖C‖²_F − Σ_j C_jj²) with C = Σ_r W_r W_rᵀ, c_in likewise with Σ_r W_rᵀ W_r.
    For Var f: f = tᵀ A_s t with A_s = Σ_r W_rᵀ s sᵀ W_r ⪰ 0, so E_t f² ≤ 3 (tr A_s)² = 3 (sᵀ C s)², hence
    Var f ≤ 2 (tr C)² + 3 c_out. Low-rank gradients make c_out, c_in large (up to the worst case
    2(tr C)², a rank-one W) and the bound wide; gradients spread over many directions make it tight, which
    is what lets the check catch a wrongly scaled or partly zeroed projection.
    """
    N = exact.shape[0]
    W = exact.reshape(N, dims.d_out, dims.d_in)
    C = torch.zeros(dims.d_out, dims.d_out, dtype=torch.float64, device=exact.device)
    step = max(1, 2**24 // max(1, dims.d_out * dims.d_out))  # bounds the batched products' memory
    for s in range(0, N, step):
        C += torch.bmm(W[s:s + step], W[s:s + step].transpose(1, 2)).sum(0)
    flat = exact.reshape(N * dims.d_out, dims.d_in)  # a view: Σ_r W_rᵀ W_r without a copy
    Din = flat.T @ flat
    total = float(C.trace())
    if total == 0:
        return 0.0

    def quad_var(M: torch.Tensor) -> float:
        return 2 * float(M.square().sum() - M.diagonal().square().sum())

    c_out, c_in = quad_var(C), quad_var(Din)
    var_f = 2 * total**2 + 3 * c_out
    var_m = (var_f + (dims.k_in - 1) * c_out + (dims.k_out - 1) * c_in) / (dims.k_out * dims.k_in)
    return math.sqrt(var_m) / total


def _rel(a, b):
    if a is None or b is None or b == 0:
        return None
    return (a - b) / abs(b)


def unprojected_comparison(
    name: str, exact: torch.Tensor, projected: torch.Tensor, dims, prompt_index, accepted, sigma: float,
    projection_kind: str,
) -> dict:
    """Statistics of the exact unprojected response Gram of one module beside the projected one.

    ``exact`` is (N × d_out·d_in) per-response gradients; ``projected`` is the module's G (N × D).
    """
    full = (exact @ exact.T).cpu().numpy()
    proj = (projected @ projected.T).cpu().numpy()
    s_full = matrix_stats(full, prompt_index, accepted)
    s_proj = matrix_stats(proj, prompt_index, accepted)
    rel = {
        scope: {cat: _rel(s_proj[scope][cat]["dot"]["mean"], s_full[scope][cat]["dot"]["mean"])
                for cat in s_full[scope]}
        for scope in SCOPES
    }
    rel["self_dot"] = {
        k: _rel(s_proj["self_dot"][k]["mean"], s_full["self_dot"][k]["mean"]) for k in s_full["self_dot"]
    }
    relative_std = 0.0 if projection_kind == "none" else sketch_relative_std(exact, dims)
    tolerance = 1e-9 if projection_kind == "none" else sigma * relative_std
    err = rel["self_dot"]["all"]
    return {
        "module": name,
        "d_in": dims.d_in, "d_out": dims.d_out, "k_in": dims.k_in, "k_out": dims.k_out,
        "unprojected": s_full,
        "projected": s_proj,
        "relative_difference": rel,
        "fidelity": {
            "self_dot_relative_error": err,
            "relative_std_bound": relative_std,
            "sigma": sigma,
            "tolerance": tolerance,
            "passed": err is not None and abs(err) <= tolerance,
        },
    }


def _spectrum(rows, lam: float) -> torch.Tensor:
    """All D eigenvalues of H = RᵀR + λI, descending, unit-normalised; from the smaller of K and RᵀR."""
    small = torch.linalg.eigvalsh(rows.kernel() if rows.n <= rows.D else rows.gram())
    top = small.flip(0)[: min(rows.n, rows.D)].clamp_min(0) + lam
    spec = torch.full((rows.D,), lam, dtype=torch.float64, device=top.device)
    spec[: len(top)] = top
    return spec / spec.norm()


def module_curvature_similarity(mf, layout: Layout, cfg) -> dict[str, np.ndarray]:
    """P×P cosines between per-prompt curvatures H_p (Frobenius) and between their spectra."""
    rows, offsets = module_rows(mf, cfg.curvature.source, cfg.compute, layout)
    prompts = [rows.segment(int(offsets[s]), int(offsets[e])) for s, e in layout.prompt_bounds]
    lams = [damping_value(r, cfg.curvature.damping) for r in prompts]
    traces = [r.trace() for r in prompts]
    P, D = len(prompts), rows.D
    inner = np.zeros((P, P))
    for p in range(P):
        for q in range(p, P):
            cross = float(prompts[p].cross_kernel(prompts[q]).square().sum())
            inner[p, q] = inner[q, p] = cross + lams[p] * traces[q] + lams[q] * traces[p] + lams[p] * lams[q] * D
    norms = np.sqrt(np.diag(inner))
    spectra = torch.stack([_spectrum(r, lam) for r, lam in zip(prompts, lams, strict=True)])
    return {"frobenius": inner / np.outer(norms, norms), "spectrum": (spectra @ spectra.T).cpu().numpy()}


def offdiag_summary(M: np.ndarray) -> dict:
    off = M[~np.eye(len(M), dtype=bool)]
    if off.size == 0:
        return {"mean": None, "min": None, "max": None}
    return {"mean": float(off.mean()), "min": float(off.min()), "max": float(off.max())}
