"""Diagnostics beside the main result: projection fidelity and curvature similarity across prompts."""

from __future__ import annotations

import math

import numpy as np
import torch

from influence_job.curvature import damping_value
from influence_job.engine import Layout, module_rows
from influence_job.similarity import SCOPES, matrix_stats


def sketch_relative_std(k_in: int, k_out: int) -> float:
    """Relative standard deviation bound of |P_out W P_inᵀ|²_F as an estimate of |W|²_F (Rademacher).

    One side with k rows has Var ≤ 2|W|⁴/k; two independent sides compose to (1+2/k_in)(1+2/k_out) − 1.
    """
    return math.sqrt(2 / k_in + 2 / k_out + 4 / (k_in * k_out))


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
    tolerance = 1e-9 if projection_kind == "none" else sigma * sketch_relative_std(dims.k_in, dims.k_out)
    err = rel["self_dot"]["all"]
    return {
        "module": name,
        "d_in": dims.d_in, "d_out": dims.d_out, "k_in": dims.k_in, "k_out": dims.k_out,
        "unprojected": s_full,
        "projected": s_proj,
        "relative_difference": rel,
        "fidelity": {
            "self_dot_relative_error": err,
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
