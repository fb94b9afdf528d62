"""Dense token Gram: the pair-product GEMM against the plain GEMM over explicit rows, on the same factors.

The dense route builds H = Σ_t g_t g_tᵀ with g_t = vec(u_t v_tᵀ). The plain way (what this engine did
before, and what the original system did) forms each chunk of rows explicitly (t × D) and multiplies it by
itself: t·D² multiply-adds. ``TokenRows.gram`` multiplies symmetric pair products u_a u_c (a ≤ c) by
v_b v_d (b ≤ d) instead — about t·D²/4 — and gathers H from the result. Both accumulate chunks in
float64 with products in the chosen Gram dtype. Printed last:

    pair-product Gram vs plain row GEMM: <ratio>x

Default shape: one Qwen2.5-1.5B MLP module at projection factor 32 (k_out 280, k_in 48, D 13,440) over
32,768 token rows, as in DESIGN.md's Gram measurement; --small is a CPU-sized shape (D 3,360, 4,096 rows).
Run: python bench/token_gram.py [--device cuda] [--dtype float64|float32|tf32] [--small]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import Agreement

from influence_job.maths.rows import GRAM_DTYPES, TokenRows


def plain_gram(U: torch.Tensor, V: torch.Tensor, chunk: int, dtype: torch.dtype) -> torch.Tensor:
    """Σ over chunks of RᵀR with the rows R = vec(u_t v_tᵀ) formed explicitly."""
    D = U.shape[1] * V.shape[1]
    H = torch.zeros(D, D, dtype=torch.float64, device=U.device)
    for s in range(0, U.shape[0], chunk):
        u, v = U[s : s + chunk].to(dtype), V[s : s + chunk].to(dtype)
        rows = (u[:, :, None] * v[:, None, :]).reshape(u.shape[0], D)
        H += (rows.T @ rows).double()
    return H


def timed(fn, device: torch.device, repeats: int) -> tuple[float, torch.Tensor, int]:
    """Median seconds over ``repeats`` runs after one warm-up, the last result, and peak device bytes."""
    result = fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(repeats):
        del result
        t0 = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else 0
    return statistics.median(times), result, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float64", choices=sorted(GRAM_DTYPES), help="Gram product dtype")
    ap.add_argument("--small", action="store_true", help="CPU-sized shape: k_out 140, k_in 24, 4,096 rows")
    ap.add_argument("--rows", type=int, default=None, help="token rows (default 32,768; 4,096 with --small)")
    ap.add_argument("--chunk", type=int, default=4096, help="token rows per chunk (compute.token_chunk)")
    ap.add_argument("--repeats", type=int, default=3)
    Agreement.add_argument(ap)
    args = ap.parse_args()
    agreement = Agreement(args.bound_scale)
    k_out, k_in = (140, 24) if args.small else (280, 48)
    n = args.rows or (4096 if args.small else 32768)
    device = torch.device(args.device)
    gen = torch.Generator(device=device).manual_seed(0)
    U = torch.randn(n, k_out, device=device, generator=gen)
    V = torch.randn(n, k_in, device=device, generator=gen)
    dtype = GRAM_DTYPES[args.dtype]
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = args.dtype == "tf32"
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu, {torch.get_num_threads()} threads"
    print(f"token Gram: {n} rows, k_out {k_out}, k_in {k_in}, D {k_out * k_in}, chunk {args.chunk}, "
          f"products in {args.dtype}; {name}; torch {torch.__version__}; median of {args.repeats}")

    t_plain, H_plain, mem_plain = timed(lambda: plain_gram(U, V, args.chunk, dtype), device, args.repeats)
    t_pair, H_pair, mem_pair = timed(lambda: TokenRows(U, V, args.chunk, args.dtype).gram(), device, args.repeats)
    reference = plain_gram(U.double(), V.double(), args.chunk, torch.float64)
    err_plain = float((H_plain - reference).norm() / reference.norm())
    err_pair = float((H_pair - reference).norm() / reference.norm())
    print(f"plain row GEMM:     {t_plain * 1e3:9.1f} ms, relative error vs float64 {err_plain:.1e}"
          + (f", peak GPU memory {mem_plain / 2**30:.2f} GiB" if mem_plain else ""))
    print(f"pair-product Gram:  {t_pair * 1e3:9.1f} ms, relative error vs float64 {err_pair:.1e}"
          + (f", peak GPU memory {mem_pair / 2**30:.2f} GiB" if mem_pair else ""))
    # The pair products round each u_a·u_c and v_b·v_d once more than the plain row GEMM does; anything
    # beyond a small multiple of the plain GEMM's own error would be a wrong gather, not rounding.
    agreement.check("pair-product Gram error vs float64", err_pair, 10 * max(err_plain, 1e-15))
    agreement.finish()
    print(f"pair-product Gram vs plain row GEMM: {t_plain / t_pair:.2f}x")


if __name__ == "__main__":
    main()
