"""What the per-module checkpoint costs: time and bytes written per module against the module's own compute.

Runs the default diagnostic's configuration (token curvature, global scope, influence rows on) on the
bundled data with tiny-qwen2 on the CPU; for every module it times curvature+solve (process_module) and
then the checkpoint's save of that module's contribution (serialise, checksum, write, fsync, rename), and
prints the ratio. It then does the arithmetic for the default diagnostic at full size (Qwen2.5-1.5B, 196
modules, 96 responses × ~1,000 tokens), and for the alternative of also saving the captured factors.
Ratios are printed, never asserted; the agreement check (a saved contribution reads back bit for bit)
ends the script with status 1 when it fails.
Run: python bench/checkpoint_cost.py [--factor 32]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import Agreement

from influence_job.inputs.config import JobConfig
from influence_job.inputs.model import qwen2_1_5b_config_dict
from influence_job.maths.engine import process_module
from influence_job.run.checkpoint import Checkpoint, ModuleContribution
from influence_job.run.pipeline import capture_inputs, load_inputs
from influence_job.run.stages import module_record


def full_size_arithmetic(n_responses=96, response_tokens=800, positions=90_000) -> None:
    """Bytes a run of the default diagnostic writes to its checkpoint, and what saving factors would add."""
    cfg = qwen2_1_5b_config_dict()
    hidden, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    kv = cfg["num_key_value_heads"] * hidden // cfg["num_attention_heads"]
    per_module = 2 * n_responses**2 * 8 + response_tokens * n_responses * 8  # RAW, HINV, token scores
    total = 196 * per_module
    k = {"q": (48, 48), "k": (48, kv // 32), "v": (48, kv // 32), "o": (48, 48), "gate": (48, inter // 32),
         "up": (48, inter // 32), "down": (inter // 32, 48)}
    factor_bytes = layers * sum(positions * (a + b) * 4 for a, b in k.values())  # u, v in float32
    print(f"full size (Qwen2.5-1.5B, 196 modules, {n_responses} responses, {response_tokens * n_responses:,} "
          f"response tokens): {per_module / 2**20:.2f} MiB per module, {total / 2**20:.0f} MiB per run "
          f"({total / 1e9 / 1.0:.2f} s at 1 GB/s, plus 196 fsyncs); the curvature budget is 15 s")
    print(f"saving the captured factors too would write {factor_bytes / 2**30:.1f} GiB (u, v of {positions:,} "
          "positions in float32) to skip a capture that is one forward+backward pass: not worth it, so "
          "the checkpoint keeps contributions only and a resumed run captures again")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--factor", type=int, default=32)
    Agreement.add_argument(ap)
    args = ap.parse_args()
    agreement = Agreement(args.bound_scale)
    logging.basicConfig(level=logging.WARNING)
    cfg = JobConfig.model_validate({"projection": {"factor": args.factor}, "compute": {"device": "cpu"},
                                    "diagnostics": {"unprojected_module": None, "curvature_similarity": False}})
    ds, model, selected, _, name = load_inputs(cfg, torch.device("cpu"))
    cap, layout = capture_inputs(cfg, ds, model, selected, None, torch.device("cpu"))
    compute, save, sizes = [], [], []
    with tempfile.TemporaryDirectory(prefix="bench-ckpt-") as tmp:
        store = Checkpoint(Path(tmp) / "ckpt", {"run": "bench"})
        for i, mf in enumerate(cap.modules):
            t0 = time.perf_counter()
            res = process_module(mf, layout, cfg)
            compute.append(time.perf_counter() - t0)
            c = ModuleContribution(i, module_record(mf, res, 0.0), res.raw.numpy(), res.hinv.numpy(),
                                   res.scores.numpy())
            t0 = time.perf_counter()
            store.save(c)
            save.append(time.perf_counter() - t0)
            sizes.append(store.file(i).stat().st_size)
            back = store.load(i)
            agreement.check(f"module {i} read back, differing entries",
                            float(sum(int((a != b).sum()) for a, b in
                                      ((c.raw, back.raw), (c.hinv, back.hinv), (np.nan_to_num(c.scores),
                                                                                np.nan_to_num(back.scores))))), 1)
    print(f"model {name}, factor {args.factor}: {len(cap.modules)} modules, {ds.n} responses, "
          f"{int(layout.token_offsets[-1])} response tokens; torch {torch.__version__}, CPU")
    print(f"per module: curvature+solve median {statistics.median(compute) * 1e3:.2f} ms, checkpoint save median "
          f"{statistics.median(save) * 1e3:.2f} ms, {statistics.median(sizes) / 1024:.1f} KiB")
    full_size_arithmetic()
    agreement.finish()
    print(f"checkpoint save vs module compute (sum over modules): {sum(save) / sum(compute):.3f}x")


if __name__ == "__main__":
    main()
