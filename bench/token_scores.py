"""Token scores of one module: the engine's (influence.token_scores: token indices moved to the device once per
module, a response's consecutive token rows read as a slice) against the loop it replaced (each response's
indices copied to the device and gathered), on the same random factors, in the same process. Prints the
ratio; the two must agree to float64 rounding. (A batched product over padded responses was tried and
measured 4x slower than either on the CPU at the default shape: filling and scattering the padded operands
costs more than the loop.)

Run: python bench/token_scores.py [--responses 96] [--tokens 200] [--k-out 48] [--k-in 280] [--device cpu]
(defaults: the default diagnostic's MLP module shape at factor 32, 200 response tokens each).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import Agreement

from influence_job.maths.engine import Layout
from influence_job.maths.influence import token_scores


def per_response_loop(U, V, Z, scored, layout: Layout) -> torch.Tensor:
    """The previous loop: for each response, copy its token indices to the device, gather and score."""
    out = torch.full((int(layout.token_offsets[-1]),), float("nan"), dtype=torch.float64, device=U.device)
    k_out, k_in = U.shape[1], V.shape[1]
    for r in range(Z.shape[0]):
        if not scored[r]:
            continue
        a, b = int(layout.token_offsets[r]), int(layout.token_offsets[r + 1])
        idx = layout.token_rows[a:b].to(U.device)
        out[a:b] = ((U[idx].double() @ Z[r].reshape(k_out, k_in)) * V[idx].double()).sum(-1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--responses", type=int, default=96)
    ap.add_argument("--tokens", type=int, default=200, help="mean response tokens (lengths vary ±50 %%)")
    ap.add_argument("--k-out", type=int, default=48)
    ap.add_argument("--k-in", type=int, default=280)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    Agreement.add_argument(ap)
    args = ap.parse_args()
    agree = Agreement(args.bound_scale)
    rng = np.random.default_rng(0)
    dev = torch.device(args.device)
    counts = rng.integers(args.tokens // 2, args.tokens * 3 // 2 + 1, args.responses)
    prompt_rows = 30  # each response follows some prompt rows that are not response tokens
    rows_per = counts + prompt_rows
    row_offsets = np.concatenate([[0], np.cumsum(rows_per)])
    token_rows = np.concatenate([np.arange(row_offsets[r] + prompt_rows, row_offsets[r + 1])
                                 for r in range(args.responses)])
    n_rows = int(row_offsets[-1])
    layout = Layout(prompt_bounds=[], row_offsets=torch.as_tensor(row_offsets), token_rows=torch.as_tensor(token_rows),
                    token_offsets=np.concatenate([[0], np.cumsum(counts)]), accepted=np.ones(args.responses, bool),
                    advantage=np.zeros(args.responses))
    g = torch.Generator().manual_seed(0)
    U = torch.randn(n_rows, args.k_out, generator=g).to(dev)
    V = torch.randn(n_rows, args.k_in, generator=g).to(dev)
    Z = torch.randn(args.responses, args.k_out * args.k_in, generator=g, dtype=torch.float64).to(dev)
    scored = rng.random(args.responses) < 0.9

    def timed(fn):
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = fn(U, V, Z, scored, layout)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        return out, best

    old, t_old = timed(per_response_loop)
    new, t_new = timed(token_scores)
    same_nan = bool(torch.equal(torch.isnan(old), torch.isnan(new)))
    agree.check("NaN pattern differs (0 = same)", 0.0 if same_nan else 1.0, 0.5)
    ok = ~torch.isnan(old)
    rel = float((new[ok] - old[ok]).norm() / old[ok].norm())
    agree.check("engine vs previous loop relative difference", rel, 1e-12)
    print(f"shape: {args.responses} responses, {int(counts.sum())} tokens, k_out {args.k_out} × k_in {args.k_in}, "
          f"{args.device}")
    print(f"previous loop {t_old * 1e3:.1f} ms, engine {t_new * 1e3:.1f} ms (best of {args.repeats})")
    agree.finish()
    print(f"token scores, engine vs previous loop: {t_old / t_new:.2f}x")


if __name__ == "__main__":
    main()
