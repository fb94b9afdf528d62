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
import time

import torch
from common import Agreement, PeakRss, engine_method, original_method

from influence_job.inputs.config import JobConfig
from influence_job.run.pipeline import capture_inputs, load_inputs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-qwen2", choices=["tiny-qwen2", "qwen2.5-1.5b-random"])
    ap.add_argument("--factor", type=int, default=8, help="projection factor (8 gives D = 2,048 on tiny-qwen2)")
    ap.add_argument("--device", default="cpu", help="device of the capture and of this engine's solves")
    ap.add_argument("--data", default=None, help="JSONL data (default: the bundled example)")
    Agreement.add_argument(ap)
    args = ap.parse_args()
    agreement = Agreement(args.bound_scale)
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
    # Both methods solve the same float64 systems from the same captured factors; the automatic damping bounds
    # cond(H) by 1 + 10·D, so their float64 results agree far inside 1e-8 (measured: ~1e-14).
    agreement.check("HINV relative error vs the original method", hinv_err, 1e-8)
    agreement.check("token-score relative error vs the original method", score_err, 1e-8)
    agreement.check("skipped rows that differ", float(not same_nan), 1)
    print(f"original method (dense D×D Cholesky per module and prompt, CPU): {t_orig:.3f} s, "
          f"peak RSS growth {mem_orig.growth / 2**20:.1f} MiB")
    print(f"this engine (routes: {', '.join(sorted(routes))}): {t_engine:.3f} s, "
          f"peak RSS growth {mem_engine.growth / 2**20:.1f} MiB")
    agreement.finish()
    print(f"speedup vs original method: {t_orig / t_engine:.1f}x")


if __name__ == "__main__":
    main()
