"""Curvature rows: the rows R of H = RᵀR + λI, as token factors or as whole response gradients.

A token row is g_t = vec(u_t v_tᵀ) (``TokenRows``): it is never materialised beyond a chunk, and every product
the solvers need (kernels, R Xᵀ, Rᵀ C, RᵀR and its action) is formed through the factors where that is cheaper.
A response row is a response's whole projected gradient (``ResponseRows``). Both satisfy ``CurvatureRows``, the
one interface the route choice, the solver and the diagnostics use.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Protocol

import torch

# 'auto' is resolved per factorisation (resolve_gram_dtype); a Gram built outside one (diagnostics) is float64.
GRAM_DTYPES = {"float64": torch.float64, "float32": torch.float32, "tf32": torch.float32, "auto": torch.float64}


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


def pair_rows(xt: torch.Tensor, first: torch.Tensor, second: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
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

    token = True

    def __init__(self, U: torch.Tensor, V: torch.Tensor, chunk: int = 4096, gram_dtype: str = "float64"):
        self.U, self.V, self.chunk, self.gram_dtype = U, V, chunk, gram_dtype
        self.n = U.shape[0]
        self.D = U.shape[1] * V.shape[1]
        self.row_dim = U.shape[1] + V.shape[1]
        self.gram_width = token_gram_width(U.shape[1], V.shape[1])

    @property
    def device(self) -> torch.device:
        return self.U.device

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
        when m < max(k_out, k_in), which is where bench/token_products.py finds it faster (figures in
        bench/RESULTS.md); otherwise explicit rows are kept. A step's t × m × min(k_out, k_in) intermediate holds
        no more values than a chunk of explicit rows."""
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
                pu = pair_rows(self.U[s : s + step].T.to(dtype).contiguous(), a, c, scratch_u)
                pv = pair_rows(self.V[s : s + step].T.to(dtype).contiguous(), b, d, scratch_v)
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

    token = False
    chunk = 0
    gram_dtype = "float64"

    def __init__(self, G: torch.Tensor):
        self.G = G
        self.n, self.D = G.shape
        self.row_dim = self.D
        self.gram_width = self.D * self.D

    @property
    def device(self) -> torch.device:
        return self.G.device

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


class CurvatureRows(Protocol):
    """What the route choice, the solver and the diagnostics need of a set of curvature rows."""

    n: int  # rows
    D: int  # their dimension (d_out·d_in projected)
    row_dim: int  # work per entry of the n×n kernel
    gram_width: int  # multiply-adds per row of the D×D Gram
    chunk: int  # rows formed at once when a product needs explicit rows (0: rows are explicit)
    gram_dtype: str  # products of the dense Gram
    token: bool  # rows are token factors (u_t, v_t)

    @property
    def device(self) -> torch.device: ...
    def trace(self) -> float: ...
    def kernel(self) -> torch.Tensor: ...
    def cross_kernel(self, other) -> torch.Tensor: ...
    def cross(self, X: torch.Tensor) -> torch.Tensor: ...
    def explicit(self, start: int, stop: int) -> torch.Tensor: ...
    def transpose_apply(self, C: torch.Tensor) -> torch.Tensor: ...
    def gram(self) -> torch.Tensor: ...
    def segment(self, start: int, stop: int) -> CurvatureRows: ...
