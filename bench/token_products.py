"""The token rows' products with right-hand sides — R Xᵀ (``TokenRows.cross``) and Rᵀ C
(``TokenRows.transpose_apply``), which every kernel-route solve and every float64 refinement step of a dense
solve run — through the factors U, V (what the engine does) against forming chunks of explicit rows
vec(u_t v_tᵀ) and multiplying those (what it did before, and still does when the right-hand sides outnumber
max(k_out, k_in), where explicit rows measured faster: each line says which the engine takes), same factors,
same process. Prints the time of both and
the ratio for a few right-hand sides (a prompt's influence solves) and for many (HINV's 96 response sums); the
two must agree to float64 rounding.

Run: python bench/token_products.py [--rows 8192] [--k-out 280] [--k-in 48] [--device cpu]
(defaults: a Qwen2.5-1.5B MLP module at factor 32, D 13,440; --small: k_out 70, k_in 12, 2,048 rows).
"""

from __future__ import annotations

import argparse
import time

import torch
from common import Agreement

from influence_job.maths.rows import TokenRows


def explicit_products(rows: TokenRows, X: torch.Tensor, C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The previous way: R Xᵀ and Rᵀ C from chunks of explicit rows (chunk × D float64 each)."""
    cross = torch.empty(rows.n, X.shape[0], dtype=torch.float64, device=X.device)
    back = torch.zeros(C.shape[1], rows.D, dtype=torch.float64, device=X.device)
    for s in range(0, rows.n, rows.chunk):
        e = min(s + rows.chunk, rows.n)
        R = rows.explicit(s, e)
        cross[s:e] = R @ X.T
        back.addmm_(C[s:e].T, R)
    return cross, back


def best_of(fn, repeats: int, device: torch.device) -> tuple[float, tuple]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=8192)
    ap.add_argument("--k-out", type=int, default=280)
    ap.add_argument("--k-in", type=int, default=48)
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    Agreement.add_argument(ap)
    args = ap.parse_args()
    if args.small:
        args.rows, args.k_out, args.k_in = 2048, 70, 12
    agree = Agreement(args.bound_scale)
    dev = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    U = torch.randn(args.rows, args.k_out, generator=gen).to(dev)
    V = torch.randn(args.rows, args.k_in, generator=gen).to(dev)
    ratios = []
    for k_out, k_in, factors in ((args.k_out, args.k_in, (U, V)), (args.k_in, args.k_out, (V, U))):
        rows = TokenRows(*factors)
        for m in (8, 96):
            X = torch.randn(m, rows.D, generator=gen, dtype=torch.float64).to(dev)
            C = torch.randn(rows.n, m, generator=gen, dtype=torch.float64).to(dev)
            old_s, (old_cross, old_back) = best_of(lambda r=rows, x=X, c=C: explicit_products(r, x, c),
                                                   args.repeats, dev)
            new_s, (new_cross, new_back) = best_of(
                lambda r=rows, x=X, c=C: (r.cross(x, through_factors=True), r.transpose_apply(c, through_factors=True)),
                args.repeats, dev)
            label = f"k_out {k_out}, k_in {k_in}, {m} right-hand sides"
            engine = "factored" if rows._factored(m) is not None else "explicit rows"
            print(f"{label}: explicit rows {old_s:.3f} s, factored {new_s:.3f} s ({old_s / new_s:.2f}x); "
                  f"the engine takes {engine}")
            ratios.append(f"{old_s / new_s:.2f}x ({k_out}x{k_in}, m {m})")
            for what, a, b in (("R Xᵀ", new_cross, old_cross), ("Rᵀ C", new_back, old_back)):
                agree.check(f"{what} factored vs explicit ({label}, relative)", float((a - b).norm() / b.norm()), 1e-13)
    agree.finish()
    print(f"device {dev}, {args.rows:,} token rows, D {args.k_out * args.k_in:,}; torch {torch.__version__}")
    print("token products, factored vs explicit rows: " + ", ".join(ratios))


if __name__ == "__main__":
    main()
