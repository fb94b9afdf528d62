"""Curvature + solve: this engine against a plain implementation of the original method, same inputs.

The original system built, for every module and every prompt group, the dense D×D float64 token
curvature H_p = Σ_t g_t g_tᵀ + λI on the CPU, Cholesky-factored it, and solved. Here both run on the
same captured factors in one process (per-prompt scope, token source, influence rows on), their HINV
matrices and token scores are checked to agree, and the ratio of their times is printed last:

    speedup vs original method: <ratio>x

Peak memory of each is the peak resident-set growth over the phase (sampled every 2 ms).
Run: python bench/curvature_solve.py [--factor 8] [--model tiny-qwen2] [--device cpu]
"""

from __future__ import annotations

import argparse
import logging
import threading
import time

import torch

from influence_job.config import JobConfig
from influence_job.engine import process_module
from influence_job.influence import contrast_coefficients
from influence_job.pipeline import capture_inputs, load_inputs


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096


class PeakRss:
    """Peak RSS above the starting RSS while the block runs."""

    def __enter__(self):
        self.start = self.peak = rss_bytes()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def _poll(self):
        while not self.stop.wait(0.002):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, rss_bytes())
        self.growth = self.peak - self.start


def original_method(cap, layout, cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense D×D float64 Cholesky per module and per prompt group, explicit token rows, on the CPU."""
    N = cap.modules[0].G.shape[0]
    hinv = torch.zeros(N, N, dtype=torch.float64)
    scores = torch.full((int(layout.token_offsets[-1]),), float("nan"), dtype=torch.float64)
    scores_set = torch.zeros_like(scores, dtype=torch.bool)
    for mf in cap.modules:
        G = mf.G.cpu()
        U, V = mf.U.cpu().double(), mf.V.cpu().double()
        rows = (U[:, :, None] * V[:, None, :]).reshape(U.shape[0], -1)  # every g_t, explicitly
        for s, e in layout.prompt_bounds:
            a, b = int(layout.row_offsets[s]), int(layout.row_offsets[e])
            H = rows[a:b].T @ rows[a:b]
            lam = 0.1 * torch.trace(H) / H.shape[0]
            H += lam * torch.eye(H.shape[0], dtype=torch.float64)
            L = torch.linalg.cholesky(H)
            M = G @ torch.cholesky_solve(G.T, L)
            hinv[s:e] += M[s:e] / 2
            hinv[:, s:e] += M[:, s:e] / 2
            coeff = contrast_coefficients(layout.accepted[s:e], layout.advantage[s:e], "sum", False)
            if coeff is None:
                continue
            z = torch.cholesky_solve((torch.as_tensor(coeff[0]) @ G[s:e])[:, None], L)[:, 0]
            for r in range(s, e):
                t0, t1 = int(layout.token_offsets[r]), int(layout.token_offsets[r + 1])
                tok = rows[layout.token_rows[t0:t1]] @ z
                scores[t0:t1] = torch.where(scores_set[t0:t1], scores[t0:t1] + tok, tok)
                scores_set[t0:t1] = True
    return hinv, scores


def engine_method(cap, layout, cfg) -> tuple[torch.Tensor, torch.Tensor, set[str]]:
    N = cap.modules[0].G.shape[0]
    hinv = torch.zeros(N, N, dtype=torch.float64, device=cap.modules[0].G.device)
    scores = torch.zeros(int(layout.token_offsets[-1]), dtype=torch.float64, device=hinv.device)
    routes = set()
    for mf in cap.modules:
        res = process_module(mf, layout, cfg)
        hinv += res.hinv
        scores += res.scores
        routes.add(res.route)
    return hinv.cpu(), scores.cpu(), routes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-qwen2", choices=["tiny-qwen2", "qwen2.5-1.5b-random"])
    ap.add_argument("--factor", type=int, default=8, help="projection factor (8 gives D = 2,048 on tiny-qwen2)")
    ap.add_argument("--device", default="cpu", help="device of the capture and of this engine's solves")
    ap.add_argument("--data", default=None, help="JSONL data (default: the bundled example)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    cfg = JobConfig.model_validate({
        "model": {"builtin": args.model},
        "data": {"path": args.data},
        "projection": {"factor": args.factor},
        "curvature": {"source": "token", "scope": "per_prompt"},
        "compute": {"device": args.device, "factor_dtype": "float64"},
        "diagnostics": {"unprojected_module": None, "curvature_similarity": False},
    })
    device = torch.device(args.device)
    ds, model, selected, _, name = load_inputs(cfg, device)
    cap, layout = capture_inputs(cfg, ds, model, selected, None, device)
    del model
    Ds = sorted({m.dims.D for m in cap.modules})
    print(f"model {name}, factor {args.factor}: {len(cap.modules)} modules, D in {Ds}, "
          f"{ds.n} responses, {len(layout.prompt_bounds)} prompts, {cap.n_positions} positions; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")

    with PeakRss() as mem_engine:
        t0 = time.perf_counter()
        hinv_e, scores_e, routes = engine_method(cap, layout, cfg)
        t_engine = time.perf_counter() - t0
    with PeakRss() as mem_orig:
        t0 = time.perf_counter()
        hinv_o, scores_o = original_method(cap, layout, cfg)
        t_orig = time.perf_counter() - t0

    hinv_err = float((hinv_e - hinv_o).norm() / hinv_o.norm())
    ok = ~torch.isnan(scores_o)
    score_err = float((scores_e[ok] - scores_o[ok]).norm() / scores_o[ok].norm())
    same_nan = bool(torch.equal(torch.isnan(scores_e), torch.isnan(scores_o)))
    print(f"agreement: HINV relative error {hinv_err:.2e}, token-score relative error {score_err:.2e}, "
          f"skipped rows identical: {same_nan}")
    if not (hinv_err < 1e-8 and score_err < 1e-8 and same_nan):
        raise SystemExit("the engine and the original method disagree")
    print(f"original method (dense D×D Cholesky per module and prompt, CPU): {t_orig:.3f} s, "
          f"peak RSS growth {mem_orig.growth / 2**20:.1f} MiB")
    print(f"this engine (routes: {', '.join(sorted(routes))}): {t_engine:.3f} s, "
          f"peak RSS growth {mem_engine.growth / 2**20:.1f} MiB")
    print(f"speedup vs original method: {t_orig / t_engine:.1f}x")


if __name__ == "__main__":
    main()
