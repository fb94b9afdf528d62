"""Projected-gradient collection throughput: this engine's capture against bergson's (a peer that also
projects each module's gradient two-sidedly), same model, same data, same token budget per batch, in
one process. Prints tokens/s of each and, last, `throughput vs bergson: <ratio>x`.

bergson is not a dependency of this project. Install it beside the project, e.g. in a virtual
environment that sees the project's packages (its torchvision/torchaudio/bitsandbytes requirements are
not used by the collection path and are skipped here):

    python -m venv --system-site-packages /tmp/peer && /tmp/peer/bin/pip install --no-deps bergson \\
        && /tmp/peer/bin/pip install datasets jaxtyping simple-parsing natsort petname ml_dtypes peft accelerate
    /tmp/peer/bin/python bench/peer_bergson.py [--model qwen2.5-1.5b-random --device cuda]

Both sides compute, per response, the two-sided projection of every selected linear module's gradient:
bergson with projection_dim p (p × p per module), this engine with its projection factor (k_out × k_in
per module). This engine also stores the per-position factors and the policy entropy; bergson
writes its per-response vectors to an in-memory index.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from influence_job.inputs.config import JobConfig
from influence_job.run.pipeline import capture_inputs, load_inputs


def bergson_collect(model, ds, projection_dim: int, token_budget: int, run_dir: Path) -> float:
    """Seconds for bergson to collect projected per-response gradients of every *_proj module."""
    from bergson.collector.collector import CollectorComputer
    from bergson.collector.in_memory_collector import InMemoryCollector
    from bergson.config.config import IndexConfig
    from bergson.data import allocate_batches
    from bergson.utils.worker_utils import processor_for
    from datasets import Dataset

    rows = []
    for r in ds.responses:  # loss on the response tokens only, as this engine's objective
        ids = r.prompt_ids + r.response_ids
        rows.append({"input_ids": ids, "labels": [-100] * len(r.prompt_ids) + r.response_ids, "length": len(ids)})
    data = Dataset.from_list(rows)
    cfg = IndexConfig(projection_dim=projection_dim, run_path=str(run_dir), token_batch_size=token_budget)
    Path(f"{run_dir}.part").mkdir(parents=True, exist_ok=True)
    targets = {n for n, m in model.base_model.named_modules() if isinstance(m, torch.nn.Linear) and n.endswith("proj")}
    model.requires_grad_(True)  # bergson checks for trainable parameters when it is built
    collector = InMemoryCollector(model=model.base_model, cfg=cfg, processor=processor_for(cfg),
                                  target_modules=targets, data=data)
    batches = allocate_batches(data["length"][:], token_budget)
    model.requires_grad_(True)  # bergson differentiates through the weights; this engine keeps them frozen
    _sync()
    t0 = time.perf_counter()
    CollectorComputer(model=model, data=data, collector=collector, batches=batches, cfg=cfg) \
        .run_with_collector_hooks(desc="bergson")
    _sync()
    seconds = time.perf_counter() - t0
    model.requires_grad_(False)
    model.zero_grad(set_to_none=True)
    return seconds


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-qwen2", choices=["tiny-qwen2", "qwen2.5-1.5b-random"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--data", default=None, help="JSONL (default: the bundled example)")
    ap.add_argument("--factor", type=int, default=32, help="this engine's projection factor")
    ap.add_argument("--projection-dim", type=int, default=8, help="bergson's per-side projection size")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    try:
        version("bergson")
    except PackageNotFoundError:
        raise SystemExit("bergson is not installed here: see this script's docstring for how to add it") from None
    cfg = JobConfig.model_validate({
        "model": {"builtin": args.model, "dtype": args.dtype},
        "data": {"path": args.data},
        "projection": {"factor": args.factor},
        "compute": {"device": args.device},
        "diagnostics": {"unprojected_module": None},
    })
    device = torch.device(args.device)
    ds, model, selected, _, name = load_inputs(cfg, device)
    tokens = sum(r.length for r in ds.responses)
    ours, peer = [], []
    with tempfile.TemporaryDirectory(prefix="bench-peer-") as tmp:
        for k in range(args.repeats + 1):  # the first round warms both up and is not counted
            _sync()
            t0 = time.perf_counter()
            cap, _ = capture_inputs(cfg, ds, model, selected, None, device)
            _sync()
            t_ours = time.perf_counter() - t0
            dims = sorted({m.dims.D for m in cap.modules})
            del cap
            t_peer = bergson_collect(model, ds, args.projection_dim, cfg.compute.micro_batch_tokens,
                                     Path(tmp) / f"run{k}")
            if k:
                ours.append(t_ours)
                peer.append(t_peer)
    print(f"model {name} ({args.dtype}) on {args.device}; {ds.n} responses, {tokens:,} tokens; "
          f"{len(selected)} modules; torch {torch.__version__}, bergson {version('bergson')}")
    print(f"this engine (factor {args.factor}, D per module {dims}): median {statistics.median(ours):.3f} s, "
          f"{tokens / statistics.median(ours):,.0f} tokens/s")
    print(f"bergson (projection_dim {args.projection_dim}, D per module {args.projection_dim ** 2}): median "
          f"{statistics.median(peer):.3f} s, {tokens / statistics.median(peer):,.0f} tokens/s")
    print(f"throughput vs bergson: {statistics.median(peer) / statistics.median(ours):.2f}x")


if __name__ == "__main__":
    main()
