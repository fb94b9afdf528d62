"""Shared fixtures: a tiny Qwen2 checkpoint saved to a temporary directory, and small data files."""

from __future__ import annotations

import json
import os

import pytest
import torch
from float64_qwen2 import float64_qwen2
from pages import launch
from transformers import Qwen2Config, Qwen2ForCausalLM

from influence_job.inputs.config import JobConfig
from influence_job.inputs.tokenizer import byte_level_tokenizer

# Several prompts with mixed accept/reject, one all-accepted prompt, uneven lengths; in prompt "e" an accepted
# response has a negative advantage (rewards 5, 1, -1: mean 5/3), where A_r and sign(accepted)·|A_r| differ.
GROUPS = [
    {"prompt_id": "a", "prompt": "Q: 2+3?", "responses": [
        {"response": " 5", "reward": 1.0},
        {"response": " it is 6.", "reward": -1.0},
        {"response": " five, so 5", "reward": 1.0}]},
    {"prompt_id": "b", "prompt": "Q: 7*6 =", "responses": [
        {"response": " 42!", "reward": 0.5},
        {"response": " 48", "reward": 0.0}]},
    {"prompt_id": "c", "prompt": "Say hi", "responses": [
        {"response": " hi", "reward": 1.0},
        {"response": " hello there", "reward": 2.0},
        {"response": " hey", "reward": 1.0, "accepted": True}]},
    {"prompt_id": "d", "prompt": "Q: 1-1", "responses": [
        {"response": " 1", "reward": -1.0},
        {"response": " 0 (zero)", "reward": 1.0}]},
    {"prompt_id": "e", "prompt": "Q: 9-4", "responses": [
        {"response": " 5", "reward": 5.0},
        {"response": " 5, I think", "reward": 1.0},
        {"response": " 13", "reward": -1.0}]},
]


@pytest.fixture(autouse=True, scope="session")
def _qwen2_in_float64():
    """Every in-process test runs Qwen2 with its norm, rotary angles and softmax in the model's dtype, so a
    float64 run is exact to float64 rounding whatever CPU kernels PyTorch picks (see float64_qwen2.py)."""
    with float64_qwen2():
        yield


@pytest.fixture(autouse=True, scope="session")
def _subprocess_temp_files(tmp_path_factory):
    """Commands the tests start keep their temporary files (torchrun's torchelastic_* folders) under pytest's
    own temporary folder, which pytest prunes, instead of leaving them in /tmp."""
    saved = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(tmp_path_factory.mktemp("subprocess-tmp"))
    yield
    if saved is None:
        os.environ.pop("TMPDIR")
    else:
        os.environ["TMPDIR"] = saved


def tiny_config(**over) -> Qwen2Config:
    kw = dict(vocab_size=260, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
              num_key_value_heads=1, max_position_embeddings=48, tie_word_embeddings=True,
              bos_token_id=256, eos_token_id=256, pad_token_id=256)
    kw.update(over)
    return Qwen2Config(**kw)


def save_tiny_model(path, dtype=torch.float64, seed=1, **over):
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(tiny_config(**over)).to(dtype)
    model.save_pretrained(path)
    byte_level_tokenizer().save_pretrained(path)
    return path


def write_jsonl(path, groups):
    path.write_text("".join(json.dumps(g) + "\n" for g in groups))
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "groups.jsonl", GROUPS)


def exact_config(model_dir, data_path, out=None, **sections) -> JobConfig:
    """A float64 CPU run on the saved tiny model; small micro-batches so padding appears inside them."""
    base = {
        "model": {"path": str(model_dir), "dtype": "float64", "attn_implementation": "eager"},
        "data": {"path": str(data_path)},
        "compute": {"device": "cpu", "micro_batch_tokens": 40},
    }
    if out is not None:
        base["output"] = {"dir": str(out)}
    for key, value in sections.items():
        if isinstance(value, dict):
            base.setdefault(key, {}).update(value)
        else:
            base[key] = value
    return JobConfig.model_validate(base)


@pytest.fixture(scope="module")
def browser():
    """Debian's headless Chromium (tests/pages.py), one per test module."""
    pw, chromium = launch()
    yield chromium
    chromium.close()
    pw.stop()
