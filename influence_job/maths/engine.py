"""Curvature + solve, one module at a time: RAW and HINV contributions and token-influence scores.

A module's working set (its rows, one factorisation, N×N products) is all that is alive at once; the
caller adds the N×N contributions into float64 accumulators and may drop the module's factors.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from influence_job.base.memory import free_bytes
from influence_job.maths.capture import Capture, ModuleFactors
from influence_job.maths.curvature import factor
from influence_job.maths.influence import contrast_coefficients, token_scores
from influence_job.maths.rows import ResponseRows, TokenRows
from influence_job.maths.schedule import Executed, mixed_label, module_schedule


@dataclass
class Layout:
    """Where each response, prompt and response token lives, shared by all modules."""

    prompt_bounds: list[tuple[int, int]]  # responses of prompt p are [start, stop)
    row_offsets: torch.Tensor  # (N+1,) token rows of response r
    token_rows: torch.Tensor  # indices of the rows that are response tokens, response by response
    token_offsets: np.ndarray  # (N+1,) response r's tokens are token_rows[token_offsets[r]:token_offsets[r+1]]
    accepted: np.ndarray
    advantage: np.ndarray



def make_layout(cap: Capture, prompt_index: np.ndarray, accepted: np.ndarray, advantage: np.ndarray) -> Layout:
    """The layout of the captured rows: prompts as contiguous response ranges (the data keeps a prompt's responses
    together), each response's token rows, and its labels."""
    bounds = []
    for p in range(int(prompt_index.max()) + 1):
        idx = np.flatnonzero(prompt_index == p)
        bounds.append((int(idx[0]), int(idx[-1]) + 1))
    token_rows = torch.nonzero(cap.row_token >= 0).flatten()
    counts = np.array([len(e) for e in cap.entropy])
    return Layout(
        prompt_bounds=bounds,
        row_offsets=torch.as_tensor(cap.row_offsets),
        token_rows=token_rows,
        token_offsets=np.concatenate([[0], np.cumsum(counts)]),
        accepted=accepted,
        advantage=advantage,
    )


@dataclass
class ModuleResult:
    raw: torch.Tensor  # N×N float64
    hinv: torch.Tensor  # N×N float64
    scores: torch.Tensor | None  # (total response tokens,) float64 contribution, NaN for skipped prompts
    route: str
    damping: float
    factorisations: int
    failed: int
    seconds: float
    gram_dtype: str | None  # products of the dense token Gram (None: no dense token Gram was built)
    refinements: int  # exact applications of H by float64 refinement, over all its factorisations
    executed: list[Executed]  # its factorisations as run, in order



def module_rows(mf: ModuleFactors, source: str, compute_cfg, layout: Layout):
    """The module's curvature rows, and offsets: response r's gradient is the sum of rows [off[r], off[r+1])."""
    if source == "token":
        # 'auto' stays: each factorisation resolves it for its size (curvature.resolve_gram_dtype).
        return TokenRows(mf.U, mf.V, compute_cfg.token_chunk, compute_cfg.gram_dtype), layout.row_offsets
    return ResponseRows(mf.G), torch.arange(mf.G.shape[0] + 1)


def process_module(mf: ModuleFactors, layout: Layout, cfg) -> ModuleResult:
    """One module's RAW Gram, its factorisations in schedule order (maths.schedule) with the HINV quadratic forms
    and the token-score solves they serve, and a record of what ran. Every factorisation chooses its route within
    the memory free when the module starts."""
    t0 = time.perf_counter()
    G = mf.G
    N = G.shape[0]
    curv = cfg.curvature
    rows, offsets = module_rows(mf, curv.source, cfg.compute, layout)
    limit = free_bytes(G.device)  # 'auto' takes a route whose working set fits what is free now
    raw = G @ G.T
    hinv = None if curv.scope == "global" else torch.zeros(N, N, dtype=torch.float64, device=G.device)
    damping = float("nan")
    # Token scores: each prompt's solve gives z_r for its responses (row r of Z); one batched pass at the end.
    Z = torch.zeros_like(G) if cfg.influence.enabled else None
    scored = np.zeros(N, dtype=bool)
    solvers, executed = [], []
    for f in module_schedule(layout.prompt_bounds, offsets, curv.scope, cfg.influence.enabled):
        part = rows if f.prompt is None else rows.segment(*f.rows)
        solver = factor(part, curv.damping, curv.solver, n_rhs=f.n_rhs, limit_bytes=limit, quad=f.quad)
        solvers.append(solver)
        executed.append(Executed(f.size, f.n_rhs, f.quad, solver.route))
        s, e = f.responses
        if f.prompt is None:
            hinv = solver.quad(G, offsets)
            damping = solver.lam
        elif f.quad:
            M = solver.quad(G)
            hinv[s:e] += M[s:e] / 2
            hinv[:, s:e] += M[:, s:e] / 2
        if f.scores:
            coeff = contrast_coefficients(layout.accepted[s:e], layout.advantage[s:e], cfg.influence.aggregate,
                                          cfg.influence.exclude_self)
            if coeff is not None:  # else no contrast: the prompt's rows stay NaN
                Z[s:e] = solver.solve(torch.as_tensor(coeff, dtype=torch.float64, device=G.device) @ G[s:e])
                scored[s:e] = True
    scores = None if Z is None else token_scores(mf.U, mf.V, Z, scored, layout)
    if G.is_cuda:
        torch.cuda.synchronize()
    products = [s.rows.gram_dtype for s in solvers if s.route == "dense" and s.rows.token]
    return ModuleResult(
        raw=raw, hinv=hinv, scores=scores, route=mixed_label([x.route for x in executed]), damping=damping,
        factorisations=len(solvers), failed=sum(not s.ok for s in solvers), seconds=time.perf_counter() - t0,
        gram_dtype=mixed_label(products) if products else None,
        refinements=sum(s.refinements for s in solvers), executed=executed,
    )
