"""The planner against measurement on this machine's CPU, at sizes where compute (not Python) dominates.

For each configuration: `make_plan` with the CPU profile (rates measured in this process), then the job itself;
prints each estimated phase beside the measured one (seconds and the ratio measured/planned), and the peak host
memory beside the plan's. Configurations:

- kernel: tiny-qwen2, MLP modules at projection factor 4 (D = 8,192 > 2,254 token rows: kernel route);
- dense: tiny-qwen2, all modules at factor 8 (D ≤ 2,048 < 2,254 rows: dense global, kernel per prompt);
- capture: a random Qwen2 with hidden 1,024 and 4 layers, 16 sequences of 1,000 tokens (the forward and
  backward dominate);
- refined: the same with float32 Gram products refined to float64 solves (compute.gram_dtype: float32), the
  planner's refinement steps against the job's;
- deep: a random Qwen2 with Qwen2.5-1.5B's 28 layers (hidden 256), the same data: the diagnostics (one layer's
  modules) against the solves (all 28 layers') at the real model's depth.

For each: the diagnostics' share of the solves, measured and planned.

Printed last: `curvature_solve measured/planned: <ratios>`. Timings are printed, never asserted; the check is
that every run passes the job's validation. Run: python bench/plan_agreement.py [--only NAME]
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
from transformers import Qwen2Config, Qwen2ForCausalLM

from influence_job.inputs.config_files import load_config
from influence_job.planning.plan import make_plan
from influence_job.planning.profiles import cpu_profile
from influence_job.planning.workload import workload
from influence_job.run.pipeline import run_job


def random_model(path: Path, hidden: int, intermediate: int, layers: int) -> Path:
    cfg = Qwen2Config(vocab_size=512, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                      num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=2048)
    torch.manual_seed(0)
    Qwen2ForCausalLM(cfg).save_pretrained(path)
    return path


def long_data(path: Path) -> Path:
    rng = np.random.default_rng(0)
    with open(path, "w") as fh:
        for p in range(4):
            fh.write(json.dumps({"prompt_id": f"p{p}", "prompt_token_ids": rng.integers(0, 256, 100).tolist(),
                                 "responses": [{"response_token_ids": rng.integers(0, 256, 900).tolist(),
                                                "reward": (-1.0) ** r} for r in range(4)]}) + "\n")
    return path


def configurations(tmp: Path, only: str | None) -> dict[str, list[str]]:
    """Each configuration's overrides, its models and data written under ``tmp`` when it will run."""
    def wanted(name: str) -> bool:
        return only is None or only == name

    long = [f"data.path={long_data(tmp / 'long.jsonl')}", "compute.micro_batch_tokens=4096"]
    wide = ([f"model.path={random_model(tmp / 'wide', 1024, 2816, 4)}", "model.builtin=null", *long]
            if wanted("capture") or wanted("refined") else [])
    deep = ([f"model.path={random_model(tmp / 'deep', 256, 1024, 28)}", "model.builtin=null", *long]
            if wanted("deep") else [])
    return {
        "kernel": ["projection.factor=4", "modules=[gate_proj, up_proj, down_proj]"],
        "dense": ["projection.factor=8"],
        "capture": [*wide, "diagnostics.unprojected_module=null"],
        "refined": [*wide, "diagnostics.unprojected_module=null", "compute.gram_dtype=float32"],
        "deep": [*deep, "projection.factor=16"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="run one configuration")
    Agreement.add_argument(ap)
    args = ap.parse_args()
    agreement = Agreement(args.bound_scale)
    ratios = []
    logging.basicConfig(level=logging.WARNING)
    profile = cpu_profile()
    print(f"{profile.source}: " + ", ".join(f"{k} {v / 1e9:.0f} GF/s" for k, v in profile.rates.items()))
    with tempfile.TemporaryDirectory(prefix="bench-plan-") as tmp:
        for name, overrides in configurations(Path(tmp), args.only).items():
            if args.only and name != args.only:
                continue
            cfg = load_config(None, [*overrides, "compute.device=cpu"])
            plan = make_plan(cfg, workload(cfg), profile)
            results = run_job(cfg, write=False).results
            perf = results.performance
            agreement.check(f"failed validation checks of the {name} run",
                            sum(not c.passed for c in results.validation.checks), 1)
            print(f"[{name}] {' '.join(o for o in overrides if 'path=' not in o)}")
            for phase in ("capture", "curvature_solve", "diagnostics"):
                measured, planned = perf.phase_seconds[phase], plan.seconds(phase)
                print(f"[{name}]   {phase:<16} measured {measured:8.3f} s, planned {planned:8.3f} s, "
                      f"ratio {measured / max(planned, 1e-9):6.2f}")
            print(f"[{name}]   peak host        measured {perf.peak_host_mem_bytes / 2**30:8.3f} GiB, planned "
                  f"{plan.peak_host_bytes() / 2**30:8.3f} GiB")
            share = [perf.phase_seconds["diagnostics"] / perf.phase_seconds["curvature_solve"],
                     plan.seconds("diagnostics") / max(plan.seconds("curvature_solve"), 1e-9)]
            steps = sum(m.refinement_steps for m in results.modules)
            print(f"[{name}]   diagnostics/solves measured {share[0]:.3f}, planned {share[1]:.3f}; "
                  f"refinement steps {steps}")
            ratios.append(perf.phase_seconds["curvature_solve"] / max(plan.seconds("curvature_solve"), 1e-9))
    agreement.finish()
    print("curvature_solve measured/planned: " + ", ".join(f"{r:.2f}" for r in ratios))


if __name__ == "__main__":
    main()
