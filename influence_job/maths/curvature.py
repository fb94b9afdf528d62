"""Curvature and solves: H = RᵀR + λI for a set of gradient rows R, factored by the cheaper exact route.

R is either token rows g_t = vec(u_t v_tᵀ) (``TokenRows``, never materialised beyond a chunk) or response
gradients (``ResponseRows``). With K = RRᵀ (n×n) the two exact routes are:

- kernel: H⁻¹ = (I − Rᵀ(K + λI)⁻¹R)/λ (Woodbury), and for rows A = S R that are sums of R's rows,
  A H⁻¹ Aᵀ = S (K + λI)⁻¹ K Sᵀ (push-through: no cancellation). Cost O(n²·r + n³), no D×D matrix.
- dense: H built by GEMM over row chunks, Cholesky-factored: O(n·D² + D³). For token rows the GEMM runs
  over symmetric pair products instead (``TokenRows.gram``): about n·D²/4.

Everything from the factorisation on is float64. When the dense token Gram's products are float32 or TF32
(compute.gram_dtype), its factor only preconditions: every solve is refined in float64 against the exact
operator RᵀR + λI, applied through the factors (iterative refinement), so the results are float64 solves.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from influence_job.maths.routes import choose_route, resolve_gram_dtype
from influence_job.maths.rows import CurvatureRows, TokenRows

log = logging.getLogger(__name__)

def damping_value(rows: CurvatureRows, damping) -> float:
    """λ: 'auto' is 0.1 × the mean eigenvalue of RᵀR, i.e. 0.1·tr(RᵀR)/D; a number is used as given."""
    return 0.1 * rows.trace() / rows.D if damping == "auto" else float(damping)


@dataclass
class Solver:
    """A factored H = RᵀR + λI. ``ok`` is False when λ ≤ 0 or the Cholesky factorisation failed."""

    rows: CurvatureRows
    lam: float
    route: str
    L: torch.Tensor | None
    ok: bool
    seconds: float
    refine: bool = False  # L factors a lower-precision Gram: refine every dense solve in float64
    refinements: int = 0  # refinement steps taken so far

    def apply(self, X: torch.Tensor) -> torch.Tensor:
        """(H Xᵀ)ᵀ for X (m×D), exact in float64: Rᵀ(R Xᵀ) + λX through the rows, never a D×D matrix."""
        return self.rows.gram_apply(X) + self.lam * X

    def _dense_solve(self, B: torch.Tensor) -> torch.Tensor:
        X = torch.cholesky_solve(B.T, self.L).T
        if not self.refine:
            return X
        # Iterative refinement: the correction shrinks by about ‖ΔH‖/λ per step (1e-4 or less for TF32 products,
        # bench/RESULTS.md); stop when it is at float64 rounding or stops shrinking.
        last, size, scale = float("inf"), float("inf"), float(X.norm())
        for _ in range(REFINE_MAX_STEPS):
            step = torch.cholesky_solve((B - self.apply(X)).T, self.L).T
            X = X + step
            self.refinements += 1
            size, scale = float(step.norm()), float(X.norm())
            if size <= REFINED * scale or size > last / 2:
                break
            last = size
        if not size <= REFINE_ACCEPT * scale:
            self._exact_factor(size / scale)
            return torch.cholesky_solve(B.T, self.L).T
        return X

    def _refined_quad(self, A: torch.Tensor) -> torch.Tensor:
        """A H⁻¹ Aᵀ from refined solves, with its error second order in theirs.

        With X = A H⁻¹ + E (rows are solves) and the exact residual P = A − X H = −E H (``apply``, float64),
        A Xᵀ + X Pᵀ = A H⁻¹ Aᵀ − E H Eᵀ; and the correction C = P H̃⁻¹ ≈ −E gives E H Eᵀ ≈ C Pᵀ. So
        A Xᵀ + (X + C) Pᵀ is off by about ρ·‖E‖²_H (ρ the refinement's contraction, ‖ΔH‖/λ at most): where a solve
        needs about four exact applications of H after TF32 products, this quadratic form needs two.
        Stops when the second-order term itself is at float64 rounding of the result, or stops shrinking.
        """
        X = torch.cholesky_solve(A.T, self.L).T
        last, size, scale = float("inf"), float("inf"), 1.0
        for _ in range(REFINE_MAX_STEPS):
            P = A - self.apply(X)
            C = torch.cholesky_solve(P.T, self.L).T
            self.refinements += 1
            second = C @ P.T  # ≈ E H Eᵀ
            M = A @ X.T + X @ P.T + second
            size, scale = float(second.norm()), float(M.norm())
            if size <= REFINED * scale or size > last / 2:
                break
            last, X = size, X + C
        if not size <= REFINE_ACCEPT * scale:
            self._exact_factor(size / scale)
            W = torch.linalg.solve_triangular(self.L, A.T, upper=False)
            return W.T @ W
        return M

    def _exact_factor(self, stalled_at: float) -> None:
        """Refinement stalled (the cheaper Gram is too far from H for its factor to precondition it): factor the
        float64 Gram instead, once, and solve directly from then on."""
        log.warning("refinement against a %s Gram stalled at %.1e (D = %d); this factorisation uses float64 "
                    "products instead", self.rows.gram_dtype, stalled_at, self.rows.D)
        H = TokenRows(self.rows.U, self.rows.V, self.rows.chunk, "float64").gram()
        H.diagonal().add_(self.lam)
        self.L, self.refine = torch.linalg.cholesky(H), False

    def solve(self, B: torch.Tensor) -> torch.Tensor:
        """(H⁻¹ Bᵀ)ᵀ for B (m×D)."""
        if not self.ok:
            return torch.full_like(B, float("nan"))
        if self.route == "dense":
            return self._dense_solve(B)
        Y = torch.cholesky_solve(self.rows.cross(B), self.L)
        return (B - self.rows.transpose_apply(Y)) / self.lam

    def quad(self, A: torch.Tensor, offsets: torch.Tensor | None = None) -> torch.Tensor:
        """A H⁻¹ Aᵀ (m×m), symmetric.

        ``offsets`` says that row i of A is the sum of R's rows [offsets[i], offsets[i+1]); the kernel route
        then uses the push-through identity S (K+λI)⁻¹ K Sᵀ instead of Woodbury's subtraction.
        """
        m = A.shape[0]
        if not self.ok:
            return torch.full((m, m), float("nan"), dtype=torch.float64, device=A.device)
        if self.route == "dense" and not self.refine:
            W = torch.linalg.solve_triangular(self.L, A.T, upper=False)
            return W.T @ W
        if self.route == "dense":
            M = self._refined_quad(A)
        elif offsets is None:
            M = A @ self.solve(A).T
        else:
            Y = torch.cholesky_solve(self.rows.cross(A), self.L)  # (K+λI)⁻¹ K Sᵀ, since R Aᵀ = K Sᵀ
            M = segment_sum(Y, offsets)
        return (M + M.T) / 2


U64 = 2.0**-53
REFINE_MAX_STEPS = 20
REFINED = 4 * U64  # a correction this small (relative) is float64 rounding: the solve is done
REFINE_ACCEPT = 1e-12  # a refinement that stalls above this falls back to a float64 Gram


def segment_sum(Y: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Sum of the rows of Y in each segment [offsets[i], offsets[i+1])."""
    lengths = (offsets[1:] - offsets[:-1]).to(Y.device)
    seg = torch.repeat_interleave(torch.arange(len(lengths), device=Y.device), lengths)
    out = torch.zeros(len(lengths), Y.shape[1], dtype=Y.dtype, device=Y.device)
    return out.index_add_(0, seg, Y)


def factor(rows: CurvatureRows, damping, setting: str, n_rhs: int, limit_bytes: float | None = None,
           quad: bool = True) -> Solver:
    """Damp and factor the curvature of ``rows`` by the chosen route (see choose_route), for ``n_rhs`` right-hand
    sides of a quadratic form A H⁻¹ Aᵀ (``quad``) or of plain solves; failures are recorded, not raised."""
    t0 = time.perf_counter()
    if rows.token and rows.gram_dtype == "auto":
        rows = TokenRows(rows.U, rows.V, rows.chunk, resolve_gram_dtype(
            "auto", rows.U.is_cuda, rows.n, rows.D, rows.gram_width, n_rhs, quad))
    lam = damping_value(rows, damping)
    route = choose_route(rows, n_rhs, setting, limit_bytes, quad)
    if not lam > 0:
        return Solver(rows, lam, route, None, False, time.perf_counter() - t0)
    M = rows.kernel() if route == "kernel" else rows.gram()
    M.diagonal().add_(lam)
    L, info = torch.linalg.cholesky_ex(M)
    ok = int(info) == 0
    if M.is_cuda:
        torch.cuda.synchronize()
    refine = route == "dense" and rows.gram_dtype != "float64"
    if refine and not ok:  # the cheaper Gram is not even positive definite: factor the float64 one
        log.warning("a %s Gram (D = %d) is not positive definite after damping; this factorisation uses float64 "
                    "products instead", rows.gram_dtype, rows.D)
        M = TokenRows(rows.U, rows.V, rows.chunk, "float64").gram()
        M.diagonal().add_(lam)
        L, info = torch.linalg.cholesky_ex(M)
        ok, refine = int(info) == 0, False
    return Solver(rows, lam, route, L if ok else None, ok, time.perf_counter() - t0, refine=refine)
