"""Curvature and solves: H = RᵀR + λI for a set of gradient rows R, factored by the cheaper exact route.

R is either token rows g_t = vec(u_t v_tᵀ) (``TokenRows``, never materialised beyond a chunk) or response
gradients (``ResponseRows``). With K = RRᵀ (n×n) the two exact routes are:

- kernel: H⁻¹ = (I − Rᵀ(K + λI)⁻¹R)/λ (Woodbury), and for rows A = S R that are sums of R's rows,
  A H⁻¹ Aᵀ = S (K + λI)⁻¹ K Sᵀ (push-through: no cancellation). Cost O(n²·r + n³), no D×D matrix.
- dense: H built by GEMM over row chunks, Cholesky-factored: O(n·D² + D³). For token rows the GEMM runs
  over symmetric pair products instead (``TokenRows.gram``): about n·D²/4.

Everything from the factorisation on is float64.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch

GRAM_DTYPES = {"float64": torch.float64, "float32": torch.float32, "tf32": torch.float32}


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

    def _rows(self, start: int, stop: int) -> torch.Tensor:
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

    def cross(self, X: torch.Tensor) -> torch.Tensor:
        """R Xᵀ for X (m×D): (n×m)."""
        out = torch.empty(self.n, X.shape[0], dtype=torch.float64, device=X.device)
        for s in range(0, self.n, self.chunk):
            e = min(s + self.chunk, self.n)
            out[s:e] = self._rows(s, e) @ X.T
        return out

    def transpose_apply(self, C: torch.Tensor) -> torch.Tensor:
        """Rᵀ C for C (n×m), returned as (m×D): row j is Σ_t C_tj vec(u_t v_tᵀ)."""
        k_out, k_in = self.U.shape[1], self.V.shape[1]
        out = torch.zeros(C.shape[1], k_out, k_in, dtype=torch.float64, device=C.device)
        for s in range(0, self.n, self.chunk):
            e = min(s + self.chunk, self.n)
            u, v = self.U[s:e].double(), self.V[s:e].double()
            out += torch.einsum("tj,to,ti->joi", C[s:e], u, v)
        return out.reshape(C.shape[1], self.D)

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
        del scratch_u, scratch_v
        # Gather in steps that free their input, so at most two D×D-sized arrays are alive (as in factor()).
        by_in = M.index_select(1, where_in.reshape(-1))  # (pairs_out, k_in·k_in)
        del M
        by_both = by_in.index_select(0, where_out.reshape(-1)).view(k_out, k_out, k_in, k_in)
        del by_in
        return by_both.permute(0, 2, 1, 3).reshape(self.D, self.D)

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

    def transpose_apply(self, C: torch.Tensor) -> torch.Tensor:
        return C.T @ self.G

    def gram(self) -> torch.Tensor:
        return self.G.T @ self.G

    def segment(self, start: int, stop: int) -> ResponseRows:
        return ResponseRows(self.G[start:stop])


def route_costs(n_rows: int, D: int, row_dim: int, gram_width: int, n_rhs: int) -> dict[str, float]:
    """Flop estimates of the two exact routes for n_rows curvature rows and n_rhs right-hand sides.

    ``row_dim`` is the work per entry of the n×n kernel, ``gram_width`` the work per row of the D×D Gram.
    """
    return {
        "kernel": n_rows * n_rows * row_dim + n_rows**3 / 3 + 2.0 * n_rows * n_rhs * D,
        "dense": n_rows * gram_width + D**3 / 3 + 2.0 * n_rhs * D * D,
    }


def choose_route(rows, n_rhs: int, setting: str) -> str:
    if setting != "auto":
        return setting
    costs = route_costs(rows.n, rows.D, rows.row_dim, rows.gram_width, n_rhs)
    return min(costs, key=costs.get)


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

    def solve(self, B: torch.Tensor) -> torch.Tensor:
        """(H⁻¹ Bᵀ)ᵀ for B (m×D)."""
        if not self.ok:
            return torch.full_like(B, float("nan"))
        if self.route == "dense":
            return torch.cholesky_solve(B.T, self.L).T
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
        if self.route == "dense":
            W = torch.linalg.solve_triangular(self.L, A.T, upper=False)
            return W.T @ W
        if offsets is None:
            M = A @ self.solve(A).T
        else:
            Y = torch.cholesky_solve(self.rows.cross(A), self.L)  # (K+λI)⁻¹ K Sᵀ, since R Aᵀ = K Sᵀ
            M = segment_sum(Y, offsets)
        return (M + M.T) / 2


def segment_sum(Y: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Sum of the rows of Y in each segment [offsets[i], offsets[i+1])."""
    lengths = (offsets[1:] - offsets[:-1]).to(Y.device)
    seg = torch.repeat_interleave(torch.arange(len(lengths), device=Y.device), lengths)
    out = torch.zeros(len(lengths), Y.shape[1], dtype=Y.dtype, device=Y.device)
    return out.index_add_(0, seg, Y)


def factor(rows, damping, setting: str, n_rhs: int) -> Solver:
    """Damp and factor the curvature of ``rows`` by the chosen route; failures are recorded, not raised."""
    t0 = time.perf_counter()
    lam = damping_value(rows, damping)
    route = choose_route(rows, n_rhs, setting)
    if not lam > 0:
        return Solver(rows, lam, route, None, False, time.perf_counter() - t0)
    M = rows.kernel() if route == "kernel" else rows.gram()
    M.diagonal().add_(lam)
    L, info = torch.linalg.cholesky_ex(M)
    ok = int(info) == 0
    if M.is_cuda:
        torch.cuda.synchronize()
    return Solver(rows, lam, route, L if ok else None, ok, time.perf_counter() - t0)
