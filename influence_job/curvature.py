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
from contextlib import nullcontext
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

# 'auto' is resolved per factorisation (resolve_gram_dtype); a Gram built outside one (diagnostics) is float64.
GRAM_DTYPES = {"float64": torch.float64, "float32": torch.float32, "tf32": torch.float32, "auto": torch.float64}


# A TF32 GEMM against a float64 one on an H100/H200: DESIGN.md measured the Gram at 52 ms in TF32 and 219 ms in
# float32, and the GH100's float64 tensor-core peak equals its float32 peak (67 TF/s).
TF32_SPEEDUP = 4.0


def resolve_gram_dtype(setting: str, on_gpu: bool, n: int, D: int, gram_width: int, n_rhs: int,
                       quad: bool) -> str:
    """compute.gram_dtype for one dense token factorisation (n rows, D, ``gram_width`` multiply-adds per row of the
    Gram, n_rhs right-hand sides of a quadratic form or of solves). 'auto': float64 on a CPU, where cheaper products
    save nothing (bench/RESULTS.md); on a GPU TF32 when the Gram's products it saves, 2·n·gram_width·(1 − 1/4) at
    the float64 rate, outweigh the float64 refinement steps it adds, else float64 (small modules, many right-hand
    sides)."""
    if setting != "auto":
        return setting
    if not on_gpu:
        return "float64"
    saved = 2.0 * n * gram_width * (1 - 1 / TF32_SPEEDUP)
    added = REFINE_STEPS_ESTIMATE["quad" if quad else "solve"] * (4.0 * n * n_rhs * D + 2.0 * n_rhs * D * D)
    return "tf32" if saved > added else "float64"


class _AllowTf32:
    """Let CUDA float32 matmuls use TF32 inside the block (the 'tf32' Gram dtype)."""

    def __enter__(self):
        self.old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True

    def __exit__(self, *exc):
        torch.backends.cuda.matmul.allow_tf32 = self.old


def n_pairs(k: int) -> int:
    """Unordered index pairs a ≤ c among k indices."""
    return k * (k + 1) // 2


def token_gram_width(k_out: int, k_in: int) -> int:
    """Multiply-adds per token row of the pair-product Gram (``TokenRows.gram``); a plain GEMM needs D²."""
    return n_pairs(k_out) * n_pairs(k_in)


def _pairs(k: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pairs a ≤ c of k indices as two index vectors, and the symmetric k×k map (a, c) → pair number."""
    a, c = torch.triu_indices(k, k, device=device)
    number = torch.arange(a.numel(), device=device)
    where = torch.empty(k, k, dtype=torch.long, device=device)
    where[a, c] = number
    where[c, a] = number
    return a, c, where


def _pair_rows(xt: torch.Tensor, first: torch.Tensor, second: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """Rows x_first[p] ∘ x_second[p] (pairs × t) of xt (k × t), built in ``scratch``.

    Row gathers (index_select) into preallocated storage run at memory speed on CPU and GPU alike; column
    gathers by advanced indexing into fresh tensors were about 10× slower on the CPU.
    """
    p, t = first.numel(), xt.shape[1]
    out, other = scratch[: p * t].view(p, t), scratch[p * t : 2 * p * t].view(p, t)
    torch.index_select(xt, 0, first, out=out)
    torch.index_select(xt, 0, second, out=other)
    return out.mul_(other)


class TokenRows:
    """Rows g_t = vec(u_t v_tᵀ), held as the factors U (T×k_out) and V (T×k_in)."""

    def __init__(self, U: torch.Tensor, V: torch.Tensor, chunk: int = 4096, gram_dtype: str = "float64"):
        self.U, self.V, self.chunk, self.gram_dtype = U, V, chunk, gram_dtype
        self.n = U.shape[0]
        self.D = U.shape[1] * V.shape[1]
        self.row_dim = U.shape[1] + V.shape[1]
        self.gram_width = token_gram_width(U.shape[1], V.shape[1])

    def explicit(self, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) as explicit float64 D-vectors (stop − start × D): only ever for a chunk."""
        u, v = self.U[start:stop].double(), self.V[start:stop].double()
        return (u[:, :, None] * v[:, None, :]).reshape(stop - start, self.D)

    def trace(self) -> float:
        """tr(RᵀR) = Σ_t |u_t|²|v_t|², without any D-vector."""
        return float((self.U.double().square().sum(1) * self.V.double().square().sum(1)).sum())

    def kernel(self) -> torch.Tensor:
        return self.cross_kernel(self)

    def cross_kernel(self, other: TokenRows) -> torch.Tensor:
        """R Oᵀ = (U U'ᵀ) ∘ (V V'ᵀ)."""
        U, V = self.U.double(), self.V.double()
        return (U @ other.U.double().T) * (V @ other.V.double().T)

    def _factored(self, m: int, force: bool | None = None) -> int | None:
        """Token rows per step when products with m right-hand sides should go through the factors (or ``force``
        says so), else None.

        Through the factors the multiply-adds are those of explicit rows (2·n·m·D per product), but the memory
        traffic beside the GEMM is n·m·min(k_out, k_in) values instead of the n·D of forming explicit rows: less
        when m < max(k_out, k_in). Measured on the CPU (bench/token_products.py): 10.5-10.8× faster at D 13,440
        with 8 right-hand sides, 1.16× with 96; 0.5-0.7× at D 840 with 96 (70 × 12), where explicit rows are kept.
        A step's t × m × min(k_out, k_in) intermediate holds no more values than a chunk of explicit rows."""
        k_small, k_big = sorted((self.U.shape[1], self.V.shape[1]))
        use = m < k_big if force is None else force
        return max(1, self.chunk * self.D // (m * k_small)) if use else None

    def cross(self, X: torch.Tensor, through_factors: bool | None = None) -> torch.Tensor:
        """R Xᵀ for X (m×D): (n×m). Through the factors, row t is u_tᵀ X_j v_t for each X_j (X's row j as a
        k_out × k_in matrix): one GEMM of the larger factor with all the X_j side by side, then a product with the
        smaller factor summed over its index. ``through_factors``: force one way (None: the cheaper, ``_factored``)."""
        m, k_out, k_in = X.shape[0], self.U.shape[1], self.V.shape[1]
        out = torch.empty(self.n, m, dtype=torch.float64, device=X.device)
        step = self._factored(m, through_factors)
        if step is None:
            for s in range(0, self.n, self.chunk):
                e = min(s + self.chunk, self.n)
                out[s:e] = self.explicit(s, e) @ X.T
            return out
        X = X.double().view(m, k_out, k_in)
        big, small, Xr = ((self.U, self.V, X.permute(1, 0, 2).reshape(k_out, m * k_in)) if k_in <= k_out
                          else (self.V, self.U, X.permute(2, 0, 1).reshape(k_in, m * k_out)))
        for s in range(0, self.n, step):
            e = min(s + step, self.n)
            Y = (big[s:e].double() @ Xr).view(e - s, m, -1)
            out[s:e] = Y.mul_(small[s:e].double()[:, None, :]).sum(-1)
        return out

    def transpose_apply(self, C: torch.Tensor, through_factors: bool | None = None) -> torch.Tensor:
        """Rᵀ C for C (n×m), returned as (m×D): row j is Σ_t C_tj vec(u_t v_tᵀ) = vec(Uᵀ diag(C_j) V). Through the
        factors, for all j at once: one GEMM of the larger factor with the smaller one scaled by each column of C
        (a three-operand einsum made this a t × m × k_out intermediate without a GEMM, about 20× slower on the
        CPU). ``through_factors`` as in ``cross``."""
        m, k_out, k_in = C.shape[1], self.U.shape[1], self.V.shape[1]
        step = self._factored(m, through_factors)
        if step is None:
            out = torch.zeros(m, self.D, dtype=torch.float64, device=C.device)
            for s in range(0, self.n, self.chunk):
                e = min(s + self.chunk, self.n)
                out.addmm_(C[s:e].T, self.explicit(s, e))
            return out
        swap = k_in > k_out
        big, small = (self.V, self.U) if swap else (self.U, self.V)
        acc = torch.zeros(big.shape[1], m * small.shape[1], dtype=torch.float64, device=C.device)
        for s in range(0, self.n, step):
            e = min(s + step, self.n)
            W = (C[s:e, :, None] * small[s:e].double()[:, None, :]).reshape(e - s, -1)
            acc.addmm_(big[s:e].double().T, W)
        acc = acc.view(big.shape[1], m, small.shape[1])
        return (acc.permute(1, 2, 0) if swap else acc.permute(1, 0, 2)).reshape(m, self.D)

    def gram_apply(self, X: torch.Tensor) -> torch.Tensor:
        """(RᵀR Xᵀ)ᵀ for X (m×D), exact in float64: Rᵀ(R Xᵀ), through the factors or, where explicit rows are
        cheaper (``_factored``), in one pass over chunks of them."""
        if self._factored(X.shape[0]) is not None:
            return self.transpose_apply(self.cross(X))
        out = torch.zeros_like(X, dtype=torch.float64)
        for s in range(0, self.n, self.chunk):
            rows = self.explicit(s, min(s + self.chunk, self.n))
            out.addmm_((rows @ X.T).T, rows)
        return out

    def gram(self) -> torch.Tensor:
        """RᵀR (D×D) from a GEMM over token chunks of symmetric pair products, accumulated in float64.

        Entry ((a,b),(c,d)) of RᵀR is Σ_t (u_ta u_tc)(v_tb v_td): both factors are symmetric in their index
        pair, so the GEMM only needs the pairs a ≤ c and b ≤ d — M = P_u P_vᵀ with P_u (k_out(k_out+1)/2 × T)
        and P_v (k_in(k_in+1)/2 × T), about a quarter of the multiply-adds of the plain T×D row GEMM — and
        RᵀR is then gathered from M. Products are in the Gram dtype, sums across steps in float64.
        """
        dtype, device = GRAM_DTYPES[self.gram_dtype], self.U.device
        k_out, k_in = self.U.shape[1], self.V.shape[1]
        a, c, where_out = _pairs(k_out, device)
        b, d, where_in = _pairs(k_in, device)
        M = torch.zeros(a.numel(), b.numel(), dtype=torch.float64, device=device)
        # The pair products of a step hold no more values than one chunk of explicit rows (chunk × D).
        step = max(1, min(self.n, self.chunk * self.D // (2 * (a.numel() + b.numel()))))
        scratch_u = torch.empty(2 * a.numel() * step, dtype=dtype, device=device)
        scratch_v = torch.empty(2 * b.numel() * step, dtype=dtype, device=device)
        with _AllowTf32() if self.gram_dtype == "tf32" else nullcontext():
            for s in range(0, self.n, step):
                pu = _pair_rows(self.U[s : s + step].T.to(dtype).contiguous(), a, c, scratch_u)
                pv = _pair_rows(self.V[s : s + step].T.to(dtype).contiguous(), b, d, scratch_v)
                if dtype == torch.float64:
                    M.addmm_(pu, pv.T)
                else:
                    M += (pu @ pv.T).double()
                del pu, pv  # views of the scratch buffers: they would keep them alive below
        del scratch_u, scratch_v
        # Gather RᵀR from M one block row a (k_in rows of H) at a time, into H allocated once: the peak is M and H,
        # about 1.25 D² values, and the factorisation that follows holds two D×D arrays at most (as the planner
        # counts).
        H = torch.empty(self.D, self.D, dtype=torch.float64, device=device)
        cols = where_in.reshape(-1)
        for row in range(k_out):
            block = M.index_select(0, where_out[row]).index_select(1, cols)  # (c, (b, d)) for this a = row
            H[row * k_in:(row + 1) * k_in].view(k_in, k_out, k_in).copy_(
                block.view(k_out, k_in, k_in).permute(1, 0, 2))
        return H

    def segment(self, start: int, stop: int) -> TokenRows:
        return TokenRows(self.U[start:stop], self.V[start:stop], self.chunk, self.gram_dtype)


class ResponseRows:
    """Rows that are whole response gradients G (n×D, float64)."""

    def __init__(self, G: torch.Tensor):
        self.G = G
        self.n, self.D = G.shape
        self.row_dim = self.D
        self.gram_width = self.D * self.D

    def trace(self) -> float:
        return float(self.G.square().sum())

    def kernel(self) -> torch.Tensor:
        return self.G @ self.G.T

    def cross_kernel(self, other: ResponseRows) -> torch.Tensor:
        return self.G @ other.G.T

    def cross(self, X: torch.Tensor) -> torch.Tensor:
        return self.G @ X.T

    def explicit(self, start: int, stop: int) -> torch.Tensor:
        return self.G[start:stop]

    def transpose_apply(self, C: torch.Tensor) -> torch.Tensor:
        return C.T @ self.G

    def gram(self) -> torch.Tensor:
        return self.G.T @ self.G

    def segment(self, start: int, stop: int) -> ResponseRows:
        return ResponseRows(self.G[start:stop])


@dataclass(frozen=True)
class RouteEstimate:
    """What one factorisation and its solves cost by one route: flops in the Gram dtype (the dense token Gram's
    products) and in float64 (kernels, factorisation, solves), and the bytes its working set holds at its peak.

    The memory mirrors the code: the kernel route builds U·U'ᵀ and V·V'ᵀ before their product (three n×n
    float64 arrays), then holds the kernel and its Cholesky factor (two) and n×m solves; the dense route holds
    two D×D float64 arrays (the Gram and its gathered copy, then the Gram and its factor).
    """

    route: str
    gram_flops: float  # the dense token Gram's products, in compute.gram_dtype
    fp64_flops: float  # kernels, Gram of response rows, solves: float64 GEMM-like work
    factor_flops: float  # the Cholesky factorisation (n³/3 or D³/3), float64
    peak_bytes: int

    @property
    def flops(self) -> float:
        return self.gram_flops + self.fp64_flops + self.factor_flops


def route_estimates(n: int, D: int, row_dim: int, gram_width: int, n_rhs: int, token: bool,
                    chunk: int = 4096, refine_steps: int = 0) -> dict[str, RouteEstimate]:
    """Both exact routes for n curvature rows of size D and n_rhs right-hand sides (flops: 2 per multiply-add,
    n³/3 for a Cholesky factorisation). ``row_dim`` is the work per entry of the n×n kernel, ``gram_width`` the
    multiply-adds per row of the D×D Gram; ``token`` says the rows are token factors (u_t, v_t), formed in
    chunks of ``chunk`` rows when a product needs them explicitly; ``refine_steps`` float64 refinement steps
    follow each dense solve when the Gram's products are cheaper than float64 (each applies RᵀR through the
    rows: 4·n·n_rhs·D, and the factor: 2·D²·n_rhs)."""
    rows_chunk = 8 * min(n, chunk) * D if token else 0
    kernel_build = 3 if token else 2
    kernel = RouteEstimate(
        "kernel", 0.0, 2.0 * n * n * row_dim + 4.0 * n * n_rhs * D + 4.0 * n * n * n_rhs, n**3 / 3,
        8 * max(kernel_build * n * n, n * n + 2 * n * n_rhs) + rows_chunk,
    )
    gram = 2.0 * n * gram_width
    refine = refine_steps * (4.0 * n * n_rhs * D + 2.0 * n_rhs * D * D)
    dense = RouteEstimate(
        "dense", gram if token else 0.0,
        (0.0 if token else gram) + 2.0 * n_rhs * D * D + 2.0 * n_rhs * n_rhs * D + refine,
        D**3 / 3, 8 * (2 * D * D + D * n_rhs) + (rows_chunk + 8 * 4 * D * n_rhs if refine_steps else 0),
    )
    return {"kernel": kernel, "dense": dense}


def pick_route(estimates: dict[str, RouteEstimate], setting: str, limit_bytes: float | None,
               seconds) -> tuple[str, str]:
    """(route, why): a fixed setting as given; 'auto' the faster route by ``seconds(estimate)`` among those whose
    working set fits ``limit_bytes`` (None: no limit), or the smaller working set when neither fits."""
    if setting != "auto":
        return setting, "set by curvature.solver"
    fits = [e for e in estimates.values() if limit_bytes is None or e.peak_bytes <= limit_bytes]
    if not fits:
        best = min(estimates.values(), key=lambda e: e.peak_bytes)
        return best.route, f"neither route fits {_gib(limit_bytes)} free; {best.route} needs least"
    fastest = min(estimates.values(), key=seconds)
    best = min(fits, key=seconds)
    other = next(e for e in estimates.values() if e.route != best.route)
    if best is fastest:
        return best.route, f"faster ({seconds(best):.3g} s against {seconds(other):.3g} s)"
    return best.route, (f"{other.route} would be faster but needs {_gib(other.peak_bytes)}, more than "
                        f"{_gib(limit_bytes)} free")


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


# Refinement steps (exact applications of H) the estimates assume: a solve took 3 after float32 products and 4
# (D 13,440) or 5 (D 3,360) after emulated TF32 products, the HINV quadratic form 2 after either
# (bench/gram_dtype_error.py, bench/RESULTS.md).
REFINE_STEPS_ESTIMATE = {"quad": 2, "solve": 5}


def refine_steps(token: bool, gram_dtype: str, quad: bool = True) -> int:
    """Steps for a factorisation whose solves serve the quadratic form A H⁻¹ Aᵀ (quad) or plain solves."""
    return REFINE_STEPS_ESTIMATE["quad" if quad else "solve"] if token and gram_dtype != "float64" else 0


def rows_estimates(rows, n_rhs: int, quad: bool = True) -> dict[str, RouteEstimate]:
    token = isinstance(rows, TokenRows)
    return route_estimates(rows.n, rows.D, rows.row_dim, rows.gram_width, n_rhs, token, rows.chunk if token else 0,
                           refine_steps(token, getattr(rows, "gram_dtype", "float64"), quad))


def choose_route(rows, n_rhs: int, setting: str, limit_bytes: float | None = None, quad: bool = True) -> str:
    """The route ``factor`` takes: by the flop counts at equal rates (the planner, plan.py, applies a device's
    rates to the same estimates), among the routes whose working set fits ``limit_bytes``."""
    return pick_route(rows_estimates(rows, n_rhs, quad), setting, limit_bytes, lambda e: e.flops)[0]


def damping_value(rows, damping) -> float:
    """λ: 'auto' is 0.1 × the mean eigenvalue of RᵀR, i.e. 0.1·tr(RᵀR)/D; a number is used as given."""
    return 0.1 * rows.trace() / rows.D if damping == "auto" else float(damping)


@dataclass
class Solver:
    """A factored H = RᵀR + λI. ``ok`` is False when λ ≤ 0 or the Cholesky factorisation failed."""

    rows: object
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


def factor(rows, damping, setting: str, n_rhs: int, limit_bytes: float | None = None, quad: bool = True) -> Solver:
    """Damp and factor the curvature of ``rows`` by the chosen route (see choose_route), for ``n_rhs`` right-hand
    sides of a quadratic form A H⁻¹ Aᵀ (``quad``) or of plain solves; failures are recorded, not raised."""
    t0 = time.perf_counter()
    if isinstance(rows, TokenRows) and rows.gram_dtype == "auto":
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
    refine = route == "dense" and getattr(rows, "gram_dtype", "float64") != "float64"
    if refine and not ok:  # the cheaper Gram is not even positive definite: factor the float64 one
        log.warning("a %s Gram (D = %d) is not positive definite after damping; this factorisation uses float64 "
                    "products instead", rows.gram_dtype, rows.D)
        M = TokenRows(rows.U, rows.V, rows.chunk, "float64").gram()
        M.diagonal().add_(lam)
        L, info = torch.linalg.cholesky_ex(M)
        ok, refine = int(info) == 0, False
    return Solver(rows, lam, route, L if ok else None, ok, time.perf_counter() - t0, refine=refine)
