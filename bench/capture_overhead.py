"""The capture's hooks as an overhead: capture (forward + backward with the projection hooks, factors kept)
against the plain forward + backward of the same model on the same micro-batches (same log-probability
objective, no hooks), in one process, alternating, the median of the timed rounds after a warm-up round.

Printed last: `capture vs plain forward+backward: <ratio>x` (tokens/s of each beside it). Timings are printed,
never asserted. Run: python bench/capture_overhead.py [--device cuda] [--dtype bfloat16] [--small | --tiny]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from common import Agreement
from transformers import Qwen2Config, Qwen2ForCausalLM

from influence_job.inputs.config import JobConfig
from influence_job.inputs.data import Dataset, Response, micro_batches
from influence_job.inputs.model import DTYPES, builtin_config, select_modules
from influence_job.maths.capture import capture, kept_rows, make_batch, token_log_probs


def synthetic(prompts: int, responses: int, prompt_len: int, response_len: int, vocab: int) -> Dataset:
    rng = np.random.default_rng(0)
    out = []
    for p in range(prompts):
        prompt = rng.integers(0, vocab, prompt_len).tolist()
        for r in range(responses):
            out.append(Response(prompt_index=p, prompt_id=f"p{p}", response_id=f"p{p}-r{r}", prompt_ids=prompt,
                                response_ids=rng.integers(0, vocab, response_len).tolist(),
                                reward=float((-1) ** r), accepted=r % 2 == 0, advantage=float((-1) ** r)))
    return Dataset([f"p{p}" for p in range(prompts)], out)


def plain(model, ds: Dataset, cfg, device) -> np.ndarray:
    """What the capture does without its hooks: the same batches, objective and backward; returns L_r."""
    log_prob = np.zeros(ds.n)
    offsets = np.concatenate([[0], np.cumsum(kept_rows(ds, cfg.positions))])
    embed = model.get_input_embeddings()
    for index in micro_batches([r.length for r in ds.responses], cfg.compute.micro_batch_tokens):
        b = make_batch(ds, index, cfg.positions, cfg.objective, offsets, device)
        embeds = embed(b.input_ids).detach().requires_grad_(True)
        logits = model(inputs_embeds=embeds, attention_mask=b.attention, use_cache=False).logits
        target, _ = token_log_probs(logits, b)
        per_seq = (target * b.predict[:, :-1]).sum(-1)
        (per_seq.double() * b.weight).sum().backward()
        log_prob[index] = per_seq.detach().double().cpu().numpy()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return log_prob


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument("--small", action="store_true", help="a hidden-1,024, 4-layer model and 8 × 1,000 tokens")
    ap.add_argument("--tiny", action="store_true", help="a hidden-256, 2-layer model and 4 × 300 tokens (the tests)")
    ap.add_argument("--repeats", type=int, default=3)
    Agreement.add_argument(ap)
    args = ap.parse_args()
    agreement = Agreement(args.bound_scale)
    device = torch.device(args.device)
    if args.tiny:
        config = Qwen2Config(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
        ds = synthetic(2, 2, 50, 250, 512)
    elif args.small:
        config = Qwen2Config(vocab_size=512, hidden_size=1024, intermediate_size=2816, num_hidden_layers=4,
                             num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=2048)
        ds = synthetic(2, 4, 100, 900, 512)
    else:  # Qwen2.5-1.5B's shape, 2 prompts × 8 responses × ~1,000 tokens
        config = builtin_config("qwen2.5-1.5b-random")
        ds = synthetic(2, 8, 150, 850, config.vocab_size)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(DTYPES[args.dtype]).eval().requires_grad_(False).to(device)
    cfg = JobConfig.model_validate({"model": {"dtype": args.dtype}})
    selected = select_modules(model, cfg.modules)
    tokens = sum(r.length for r in ds.responses)
    times = {"plain": [], "capture": []}
    for k in range(args.repeats + 1):
        for name in ("plain", "capture"):
            t0 = time.perf_counter()
            if name == "plain":
                plain_log_prob = plain(model, ds, cfg, device)
            else:
                captured = capture(model, selected, ds, cfg, device)
                if device.type == "cuda":
                    torch.cuda.synchronize()
            if k:  # the first round warms up
                times[name].append(time.perf_counter() - t0)
    # The hooks observe, they do not change the computation: the same log-probabilities either way.
    agreement.check("log-probabilities, capture vs plain (max abs)",
                    float(np.abs(captured.log_prob - plain_log_prob).max()), 1e-9)
    agreement.finish()
    p, c = statistics.median(times["plain"]), statistics.median(times["capture"])
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"{name}, {args.dtype}, {len(selected)} modules, {tokens:,} tokens in micro-batches of "
          f"{cfg.compute.micro_batch_tokens}: plain {p:.3f} s ({tokens / p:,.0f} tokens/s), capture {c:.3f} s "
          f"({tokens / c:,.0f} tokens/s)")
    print(f"capture vs plain forward+backward: {c / p:.2f}x")


if __name__ == "__main__":
    main()
