"""Shared pieces of the benchmarks: a peak-RSS sampler, the original method, and this engine's loop."""

from __future__ import annotations

import sys
import threading

import torch

from influence_job.base.memory import rss_bytes
from influence_job.maths.engine import process_module
from influence_job.maths.influence import contrast_coefficients


class Agreement:
    """A benchmark's own correctness checks: each prints one line, and ``finish()`` exits with status 1 when
    any failed, so a benchmark whose numbers disagree never looks like a success.

    Every check is ``value < bound × scale``; ``--bound-scale 0`` therefore fails every check, which the
    tests use to show that a failed check does end the script non-zero.
    """

    def __init__(self, scale: float = 1.0):
        self.scale, self.failed = scale, []

    @staticmethod
    def add_argument(ap) -> None:
        ap.add_argument("--bound-scale", type=float, default=1.0,
                        help="multiply every agreement bound (0 makes every check fail; default 1)")

    def check(self, what: str, value: float, bound: float) -> bool:
        ok = value < bound * self.scale
        print(f"agreement {'ok' if ok else 'FAILED'}: {what} {value:.2e} (bound {bound * self.scale:.1e})")
        if not ok:
            self.failed.append(what)
        return ok

    def finish(self) -> None:
        if self.failed:
            print(f"FAILED agreement checks: {', '.join(self.failed)}")
            sys.exit(1)


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
