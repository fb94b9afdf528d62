"""The default diagnostic end to end on a Qwen2.5-1.5B-shaped random-weight model (the GPU benchmark), or on
tiny-qwen2 with --small (CPU, CI-sized).

Data: synthetic pre-tokenised groups (12 prompts × 8 responses × ~1,024 tokens by default), half of each
prompt's responses accepted. Runs the default diagnostic (token curvature, global scope) and the
response-source diagnostic, and prints wall time by phase, curvature+solve time, capture throughput
(tokens/s through forward+backward with projection), peak GPU and host memory, each beside the
original system's figure or the issue's target. The model and Gram dtypes default to the job's own
defaults (float32 model, `compute.gram_dtype: auto`: TF32 products refined to float64 solves on a GPU where
they save time, float64 on a CPU): by default this measures the default diagnostic; other dtypes by flag.
Beside each phase's measured time and share of the wall time it prints the planner's estimate (plan.py) of the
same configuration on the same device, and the diagnostics' cost relative to the solves. --plan-only h200|h100
prints the planner's estimate of the same runs on that GPU and runs nothing (any machine).
Timings are printed, never asserted; the one check is that every run passes the job's own validation (the
script exits 1 otherwise).
Run: python bench/default_diagnostic.py [--small] [--device cuda] [--model-dtype bfloat16] [--gram-dtype tf32]
     python bench/default_diagnostic.py --plan-only h200     (the planner's figures in bench/RESULTS.md)
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import Agreement

from influence_job.inputs.config import JobConfig
from influence_job.inputs.model import builtin_config
from influence_job.outputs.results import Results
from influence_job.planning.plan import Plan, make_plan
from influence_job.planning.profiles import device_profile, profile
from influence_job.planning.render import render
from influence_job.planning.workload import workload
from influence_job.run.pipeline import run_job

ORIGINAL = {"wall": 3674.0, "solve": 990.0, "gpu_gb": 142.0, "host_gb": 774.0}


def synthetic_data(path: Path, vocab: int, prompts: int, responses: int, tokens: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    with open(path, "w") as fh:
        for p in range(prompts):
            prompt_len = int(tokens * 0.15)
            group = {"prompt_id": f"p{p}", "prompt_token_ids": rng.integers(0, vocab, prompt_len).tolist(),
                     "responses": []}
            for r in range(responses):
                n = max(1, int(tokens * rng.uniform(0.6, 0.85)))
                group["responses"].append({"response_token_ids": rng.integers(0, vocab, n).tolist(),
                                           "reward": 1.0 if r % 2 == 0 else -1.0})
            fh.write(json.dumps(group) + "\n")
    return path


def config(model: str, data: Path, device: str, dtype: str, gram_dtype: str, source: str, out: Path) -> JobConfig:
    return JobConfig.model_validate({
        "model": {"builtin": model, "dtype": dtype},
        "data": {"path": str(data)},
        "curvature": {"source": source},
        "compute": {"device": device, "gram_dtype": gram_dtype},
        "output": {"dir": str(out)},
    })


def run(model: str, data: Path, device: str, dtype: str, gram_dtype: str, source: str, out: Path) -> tuple[dict, Plan]:
    """The job's results, and the planner's estimate of the same configuration on this device (made first)."""
    cfg = config(model, data, device, dtype, gram_dtype, source, out)
    plan = make_plan(cfg, workload(cfg), device_profile(torch.device(device)))
    return run_job(cfg, write=False).results, plan


def report(label: str, r: Results, plan: Plan, full_size: bool) -> None:
    perf = r.performance
    phases = ", ".join(f"{k} {v:.2f} s" for k, v in perf.phase_seconds.items())
    wall = perf.wall_seconds
    print(f"[{label}] phase: measured (share of wall) | planner's estimate (compute only, a floor)")
    for name, seconds in perf.phase_seconds.items():
        planned = f"{plan.seconds(name):.3f} s" if any(p.phase == name for p in plan.phases) else "not estimated"
        print(f"[{label}]   {name:<16} {seconds:8.3f} s ({100 * seconds / wall:4.1f} %) | {planned}")
    solves, diag = perf.phase_seconds["curvature_solve"], perf.phase_seconds.get("diagnostics", 0.0)
    print(f"[{label}] diagnostics / solves: measured {diag / solves:.3f}, planned "
          f"{plan.seconds('diagnostics') / max(plan.seconds('curvature_solve'), 1e-12):.3f}")
    print(f"[{label}] peak memory: measured GPU {perf.peak_gpu_mem_bytes / 2**30:.2f} GiB, host "
          f"{perf.peak_host_mem_bytes / 2**30:.2f} GiB | planned "
          + (f"GPU {plan.peak_device_bytes() / 2**30:.2f} GiB, " if plan.device.gpu else "")
          + f"host {plan.peak_host_bytes() / 2**30:.2f} GiB")
    print(f"[{label}] {plan.summary()}")
    tokens_per_s = r.n_positions / perf.phase_seconds["capture"]
    print(f"[{label}] {r.n_responses} responses, {r.n_positions:,} positions, {len(r.modules)} modules; "
          f"validation {'passed' if r.validation.passed else 'FAILED'}")
    print(f"[{label}] wall {perf.wall_seconds:.2f} s ({phases})")
    print(f"[{label}] curvature+solve {perf.phase_seconds['curvature_solve']:.3f} s "
          f"(sum over modules {perf.hessian_solve_seconds:.3f} s); capture {tokens_per_s:,.0f} tokens/s")
    print(f"[{label}] peak GPU {perf.peak_gpu_mem_bytes / 1e9:.2f} GB, "
          f"host {perf.peak_host_mem_bytes / 1e9:.2f} GB")
    if full_size:  # the original's figures are for the 1.5B model: no ratio for the tiny CPU run
        print(f"[{label}] vs original system (one step on 8×H200): wall "
              f"{ORIGINAL['wall'] / perf.wall_seconds:.0f}x less, curvature+solve "
              f"{ORIGINAL['solve'] / max(perf.phase_seconds['curvature_solve'], 1e-9):.0f}x less")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="tiny-qwen2, 4 prompts × 4 responses × 64 tokens (CPU)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    defaults = JobConfig()
    ap.add_argument("--model-dtype", default=defaults.model.dtype, choices=["float32", "bfloat16", "float64"],
                    help=f"model.dtype (default: the job's default, {defaults.model.dtype})")
    ap.add_argument("--gram-dtype", default=defaults.compute.gram_dtype, choices=["auto", "float64", "float32", "tf32"],
                    help=f"compute.gram_dtype (default: the job's default, {defaults.compute.gram_dtype})")
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--responses", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--plan-only", choices=["h200", "h100"],
                    help="print the planner's estimate of these runs on that GPU, run nothing")
    Agreement.add_argument(ap)
    args = ap.parse_args()
    agreement = Agreement(args.bound_scale)
    logging.basicConfig(level=logging.WARNING)
    model = "tiny-qwen2" if args.small else "qwen2.5-1.5b-random"
    prompts, responses, tokens = (4, 4, 64) if args.small else (args.prompts, args.responses, args.tokens)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"model {model} ({args.model_dtype}) on {device_name}; torch {torch.__version__}; "
          f"{prompts} prompts × {responses} responses × ~{tokens} tokens; Gram products in {args.gram_dtype}")
    with tempfile.TemporaryDirectory(prefix="bench-default-") as tmp:
        data = synthetic_data(Path(tmp) / "data.jsonl", builtin_config(model).vocab_size, prompts, responses, tokens)
        if args.plan_only:
            for source in ("token", "response"):
                cfg = config(model, data, "cuda", args.model_dtype, args.gram_dtype, source, Path(tmp) / source)
                print(f"\n== {source} source\n" + render(make_plan(cfg, workload(cfg), profile(args.plan_only))))
            return
        both = {source: run(model, data, args.device, args.model_dtype, args.gram_dtype, source, Path(tmp) / source)
                for source in ("token", "response")}
    runs = {source: r for source, (r, _) in both.items()}
    token, response = runs["token"], runs["response"]
    report("token source, global scope (default)", token, both["token"][1], not args.small)
    report("response source", response, both["response"][1], not args.small)
    for source, r in runs.items():
        failed = [c.name for c in r.validation.checks if not c.passed]
        agreement.check(f"failed validation checks of the {source}-source run{' ' + str(failed) if failed else ''}",
                        len(failed), 1)
    agreement.finish()
    scope = " (not applicable to --small)" if args.small else ""
    tp, rp = token.performance, response.performance
    print(f"targets (for the 1.5B model on one H200/H100){scope}: wall ≤ 60 s: {tp.wall_seconds:.1f} s; "
          f"curvature+solve ≤ 15 s (token) / ≤ 1 s (response): {tp.phase_seconds['curvature_solve']:.2f} s / "
          f"{rp.phase_seconds['curvature_solve']:.2f} s; "
          f"peak host ≤ 32 GB: {tp.peak_host_mem_bytes / 1e9:.1f} GB; "
          f"peak GPU ≤ 70 GB: {tp.peak_gpu_mem_bytes / 1e9:.1f} GB")


if __name__ == "__main__":
    main()
