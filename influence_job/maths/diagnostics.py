"""Diagnostics beside the main result: projection fidelity and curvature similarity across prompts."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from influence_job.base.memory import free_bytes
from influence_job.maths.curvature import damping_value
from influence_job.maths.engine import Layout, module_rows
from influence_job.maths.similarity import SCOPES, matrix_stats


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


# Spectra: all eigenvalues (eigvalsh) while the smaller side of a prompt's curvature — its token kernel or its
# D×D Gram — has at most EXACT_SPECTRUM_MAX rows; above, only the LEADING largest, by block subspace iteration.
# Cost per prompt: O(m³) below the limit, O(m² · LEADING · SUBSPACE_STEPS) above (m the smaller side), against
# the O(n·D²) or O(n²·D) of building that prompt's curvature at all.
EXACT_SPECTRUM_MAX = 2048
LEADING = 64
SUBSPACE_STEPS = 12


def _leading_eigenvalues(A: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest eigenvalues of the symmetric PSD A (descending): block subspace iteration from a seeded
    start, then Rayleigh–Ritz. Ritz values never exceed the eigenvalues they approximate (interlacing). Their
    accuracy is not part of spectrum_cosine's bound, which takes them as exact; measured at m = 4,096
    (bench/RESULTS.md): ≤ 2.7 % relative on a flat spectrum (the worst case: a random Wishart matrix) and
    ≤ 1.2e-4 on a decaying one, as curvatures' are."""
    m = A.shape[0]
    b = min(m, k + 16)
    start = torch.randn(m, b, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(A.device)
    Q = torch.linalg.qr(start).Q
    for _ in range(SUBSPACE_STEPS):
        Q = torch.linalg.qr(A @ Q).Q
    return torch.linalg.eigvalsh(Q.T @ A @ Q).flip(0)[:k].clamp_min(0)


@dataclass
class Spectrum:
    """What the spectrum cosine needs of H = RᵀR + λI (D eigenvalues): its largest eigenvalues exactly (or to
    subspace-iteration accuracy), and the count, sum and sum of squares of all the others — exact, from
    tr(RᵀR) and ‖RᵀR‖²_F."""

    top: torch.Tensor  # descending, λ included
    flat: bool  # every other eigenvalue is known to be λ (all of RᵀR's nonzero eigenvalues are in top)
    rest_count: int
    rest_sum: float
    rest_squares: float
    norm: float  # ‖eigenvalues of H‖ = ‖H‖_F


def _eigenvalues(A: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Eigenvalues of the symmetric PSD A (m×m, or a batch of them), descending: all of them (True) up to
    EXACT_SPECTRUM_MAX rows, else the LEADING largest (False)."""
    m = A.shape[-1]
    if m <= EXACT_SPECTRUM_MAX or LEADING >= m:
        return torch.linalg.eigvalsh(A).flip(-1).clamp_min(0), True
    if A.dim() == 3:
        return torch.stack([_leading_eigenvalues(a, LEADING) for a in A]), False
    return _leading_eigenvalues(A, LEADING), False


def _spectrum(A: torch.Tensor, sigma: torch.Tensor, whole: bool, D: int, lam: float) -> Spectrum:
    """The Spectrum of H = RᵀR + λI from A, either side of RᵀR (the kernel R Rᵀ or RᵀR itself: the same nonzero
    eigenvalues), and A's eigenvalues ``sigma`` (all, or the leading ones)."""
    trace, squares = float(A.trace()), float(A.square().sum())
    top_sum, top_squares = float(sigma.sum()), float(sigma.square().sum())
    rest = D - len(sigma)
    rest_sum = max(0.0, trace - top_sum) + rest * lam
    rest_squares = max(0.0, squares - top_squares) + 2 * lam * max(0.0, trace - top_sum) + rest * lam**2
    norm = math.sqrt(squares + 2 * lam * trace + D * lam**2)
    return Spectrum(sigma + lam, whole, rest, rest_sum, rest_squares, norm)


def spectrum_cosine(a: Spectrum, b: Spectrum) -> tuple[float, float]:
    """(estimate, bound) of the cosine between the sorted eigenvalue vectors of two curvatures of equal D.

    The leading parts pair exactly. Of the rest, sorted alike, Chebyshev's sum inequality gives
    Σ a_i b_i ≥ (Σ a_i)(Σ b_i)/m and Cauchy–Schwarz Σ a_i b_i ≤ √(Σ a_i² Σ b_i²); the estimate is the middle and
    the bound half the gap, over the norms. When the rest of either spectrum is flat (λ alone: its eigenvalues
    were all computed, as below EXACT_SPECTRUM_MAX) the lower value is exact and the bound 0.
    """
    k = min(len(a.top), len(b.top))
    head = float(a.top[:k] @ b.top[:k])
    # Eigenvalues beyond k of the longer head move into its rest.
    a_sum = a.rest_sum + float(a.top[k:].sum())
    a_sq = a.rest_squares + float(a.top[k:].square().sum())
    b_sum = b.rest_sum + float(b.top[k:].sum())
    b_sq = b.rest_squares + float(b.top[k:].square().sum())
    m = a.rest_count + len(a.top) - k
    low = a_sum * b_sum / m if m else 0.0
    high = math.sqrt(a_sq * b_sq)
    scale = a.norm * b.norm
    if (a.flat and k == len(a.top)) or (b.flat and k == len(b.top)):  # Σ a_i·c = c·Σ a_i: Chebyshev's equality
        return (head + low) / scale, 0.0
    return (head + (low + high) / 2) / scale, max(0.0, high - low) / 2 / scale


def _eig_flops(m: int) -> float:
    """Flops of _eigenvalues on m×m: 4m³/3 for the tridiagonal reduction of eigvalsh, or the subspace iteration's
    products and QR factorisations (b = LEADING + 16 columns)."""
    if m <= EXACT_SPECTRUM_MAX or LEADING >= m:
        return 4 * m**3 / 3
    b = LEADING + 16
    return SUBSPACE_STEPS * (2.0 * m * m * b + 4.0 * m * b * b) + 2.0 * m * m * b


def similarity_estimates(prompt_rows: list[int], D: int, row_dim: int) -> dict[str, tuple[float, int]]:
    """(float64 flops, peak bytes) of module_curvature_similarity by its two sides, for prompts of
    ``prompt_rows`` curvature rows each:

    - 'kernel': the cross kernels R_p R_qᵀ of every pair of prompts (‖·‖²_F gives ⟨H_p, H_q⟩), each prompt's
      spectrum from the smaller of its kernel and its D×D Gram;
    - 'gram': every prompt's D×D Gram R_pᵀR_p from explicit rows, their inner products as one product, and
      their spectra.
    """
    P = len(prompt_rows)
    pairs = sum(2.0 * a * b * row_dim for i, a in enumerate(prompt_rows) for b in prompt_rows[i:])
    side = [min(n, D) for n in prompt_rows]
    kernel = pairs + sum(2.0 * n * m * min(n, D) + _eig_flops(m) for n, m in zip(prompt_rows, side, strict=True))
    kernel_peak = 8 * (3 * max(prompt_rows) ** 2 + 2 * max(side) ** 2)
    gram = sum(2.0 * n * D * D for n in prompt_rows) + 2.0 * P * P * D * D + P * _eig_flops(D)
    gram_peak = 8 * (P * D * D + KERNEL_CHUNK * D)
    return {"kernel": (kernel, kernel_peak), "gram": (gram, gram_peak)}


def similarity_side(prompt_rows: list[int], D: int, row_dim: int, limit_bytes: float | None) -> str:
    """The cheaper side (by flops) whose memory fits ``limit_bytes``; the kernel side when neither fits (its
    pairs can be taken one at a time)."""
    est = similarity_estimates(prompt_rows, D, row_dim)
    fits = [k for k, (_, peak) in est.items() if limit_bytes is None or peak <= limit_bytes]
    return min(fits, key=lambda k: est[k][0]) if fits else "kernel"


KERNEL_CHUNK = 4096  # explicit token rows formed at a time for the Gram side


def _prompt_grams(rows, offsets, bounds) -> torch.Tensor:
    """R_pᵀR_p (P×D×D, float64) for every prompt, from explicit rows in chunks of KERNEL_CHUNK."""
    out = torch.zeros(len(bounds), rows.D, rows.D, dtype=torch.float64, device=rows.device)
    for p, (s, e) in enumerate(bounds):
        seg = rows.segment(int(offsets[s]), int(offsets[e]))
        for a in range(0, seg.n, KERNEL_CHUNK):
            X = seg.explicit(a, min(a + KERNEL_CHUNK, seg.n))
            out[p].addmm_(X.T, X)
    return out


def module_curvature_similarity(mf, layout: Layout, cfg) -> dict[str, np.ndarray]:
    """P×P cosines between per-prompt curvatures H_p (Frobenius, exact) and between their spectra (with the
    bound of spectrum_cosine), by the cheaper side (similarity_side)."""
    rows, offsets = module_rows(mf, cfg.curvature.source, cfg.compute, layout)
    prompts = [rows.segment(int(offsets[s]), int(offsets[e])) for s, e in layout.prompt_bounds]
    lams = [damping_value(r, cfg.curvature.damping) for r in prompts]
    traces = [r.trace() for r in prompts]
    P, D = len(prompts), rows.D
    side = similarity_side([r.n for r in prompts], D, rows.row_dim, free_bytes(rows.device))
    if side == "gram":
        B = _prompt_grams(rows, offsets, layout.prompt_bounds)
        flat = B.reshape(P, -1)
        cross = (flat @ flat.T).cpu().numpy()  # ⟨R_pᵀR_p, R_qᵀR_q⟩ = ‖R_p R_qᵀ‖²_F
        sigma, whole = _eigenvalues(B)
        spectra = [_spectrum(B[p], sigma[p], whole, D, lams[p]) for p in range(P)]
    else:
        cross = np.zeros((P, P))
        for p in range(P):
            for q in range(p, P):
                cross[p, q] = cross[q, p] = float(prompts[p].cross_kernel(prompts[q]).square().sum())
        spectra = []
        for r, lam in zip(prompts, lams, strict=True):
            A = r.kernel() if r.n <= r.D else r.gram()  # same nonzero eigenvalues: the smaller side
            sigma, whole = _eigenvalues(A)
            spectra.append(_spectrum(A, sigma, whole, D, lam))
    lam, tr = np.array(lams), np.array(traces)
    inner = cross + np.outer(lam, tr) + np.outer(tr, lam) + np.outer(lam, lam) * D
    norms = np.sqrt(np.diag(inner))
    spectrum, bound = _spectrum_cosines(spectra, D, lams)
    return {"frobenius": inner / np.outer(norms, norms), "spectrum": spectrum, "spectrum_bound": bound}


def _spectrum_cosines(spectra: list[Spectrum], D: int, lams: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """All pairs' spectrum_cosine. When every spectrum is whole (each eigenvalue of H_p known: the computed ones
    and D − m copies of λ_p) the cosines are one product of the P sorted eigenvalue vectors, exact (bound 0)."""
    P = len(spectra)
    if all(s.flat for s in spectra) and P * D <= 2**24:
        S = torch.stack([torch.cat([s.top.cpu(), torch.full((D - len(s.top),), lam, dtype=torch.float64)])
                         for s, lam in zip(spectra, lams, strict=True)])
        S = S / S.norm(dim=1, keepdim=True)
        return (S @ S.T).numpy(), np.zeros((P, P))
    spectrum, bound = np.eye(P), np.zeros((P, P))
    for p in range(P):
        for q in range(p + 1, P):
            spectrum[p, q], bound[p, q] = spectrum_cosine(spectra[p], spectra[q])
            spectrum[q, p], bound[q, p] = spectrum[p, q], bound[p, q]
    return spectrum, bound


def offdiag_summary(M: np.ndarray) -> dict:
    off = M[~np.eye(len(M), dtype=bool)]
    if off.size == 0:
        return {"mean": None, "min": None, "max": None}
    return {"mean": float(off.mean()), "min": float(off.min()), "max": float(off.max())}
