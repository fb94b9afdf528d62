"""The data stage: prompt groups from JSON Lines or Parquet, tokenised, labelled, and cut into micro-batches.

Two layouts are read: the native *grouped* JSON Lines (one prompt group per line), and *flat* tables, one
row per response, as RL trainers dump them (verl's rollout JSONL: input/output/score/step; Parquet with
prompt, completion or response, reward columns). Flat rows are grouped by their prompt id when there is one,
else by identical prompt, keeping input order. A prompt may be a list of chat messages, rendered with the
model's own chat template. Responses keep input order (prompt order, then response order) everywhere;
micro-batches are a length-sorted permutation of them, and the capture stage puts results back in input
order.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path

import numpy as np

from influence_job.base.errors import InputError
from influence_job.inputs.data_files import read_groups

log = logging.getLogger(__name__)

RESPONSE_KEYS = {"response", "response_token_ids", "reward", "accepted", "response_id"}
GROUP_KEYS = {"prompt_id", "prompt", "prompt_token_ids", "responses"}


@dataclass
class Response:
    prompt_index: int
    prompt_id: str
    response_id: str
    reward: float
    accepted: bool
    prompt_ids: list[int]
    response_ids: list[int]
    advantage: float = 0.0
    meta: dict = field(default_factory=dict)
    response_tokens: list[str] | None = None  # each response token decoded alone (None without a tokenizer)

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)


@dataclass
class Dataset:
    prompt_ids: list[str]
    responses: list[Response]

    @property
    def n(self) -> int:
        return len(self.responses)

    @cached_property
    def arrays(self) -> dict[str, np.ndarray]:
        """Per-response arrays in input order: what similarity.npz carries (built once: the responses are final
        when the Dataset is made)."""
        return {
            "prompt_index": np.array([r.prompt_index for r in self.responses], dtype=np.int64),
            "accepted": np.array([r.accepted for r in self.responses], dtype=bool),
            "reward": np.array([r.reward for r in self.responses], dtype=np.float64),
            "advantage": np.array([r.advantage for r in self.responses], dtype=np.float64),
        }


def example_data_path() -> Path:
    return Path(str(resources.files("influence_job").joinpath("examples/grpo_math.jsonl")))


def _token_list(value, what: str, where: str, vocab_size: int) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        raise InputError(f"{where}: '{what}' must be a list of integer token ids.")
    bad = [t for t in value if t < 0 or t >= vocab_size]
    if bad:
        raise InputError(
            f"{where}: '{what}' has token id {bad[0]} outside the model's vocabulary [0, {vocab_size}). "
            "Tokenise with the model's own tokenizer."
        )
    return list(value)


def _chat_ids(messages: list, where: str, tokenizer, vocab_size: int) -> list[int]:
    """A chat prompt as trainers tokenise it: the model's chat template with the generation prompt added."""
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
               for m in messages) or not messages:
        raise InputError(f"{where}: a chat prompt must be a non-empty list of {{role, content}} messages (strings).")
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise InputError(
            f"{where}: the prompt is a list of chat messages but the model's tokenizer has no chat template. "
            "Give the prompt as text or as prompt_token_ids, or use a model directory whose tokenizer has one."
        )
    out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    ids = out["input_ids"] if isinstance(out, Mapping) else out  # transformers 5 returns a BatchEncoding
    return _token_list(list(ids), "prompt", where, vocab_size)


def _text_or_ids(obj: dict, text_key: str, ids_key: str, where: str, tokenizer, vocab_size: int) -> list[int]:
    if ids_key in obj:
        return _token_list(obj[ids_key], ids_key, where, vocab_size)
    if text_key not in obj:
        raise InputError(f"{where}: missing '{text_key}' (text) or '{ids_key}' (token ids).")
    text = obj[text_key]
    if text_key == "prompt" and isinstance(text, list):
        return _chat_ids(text, where, tokenizer, vocab_size)
    if not isinstance(text, str):
        raise InputError(f"{where}: '{text_key}' must be a string, got {type(text).__name__}.")
    if tokenizer is None:
        raise InputError(
            f"{where}: '{text_key}' is text but the model directory has no tokenizer. Save the tokenizer "
            f"next to the model, or give pre-tokenised '{ids_key}'."
        )
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _number(value, key: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InputError(f"{where}: '{key}' must be a finite number, got {value!r}.")
    return float(value)


def _group_shape(obj, index: int, where: str, threshold: float, response_wheres: list[str] | None):
    """What a prompt group must be before any token is looked at: (prompt id, and per response its where, object,
    reward and accepted label). Needs no tokenizer, so `check_data_file` runs it before the model loads."""
    if not isinstance(obj, dict):
        raise InputError(f"{where}: each line must be a JSON object (one prompt group), got {type(obj).__name__}.")
    prompt_id = str(obj.get("prompt_id", f"line{index + 1}"))
    responses = obj.get("responses")
    if not isinstance(responses, list):
        raise InputError(f"{where}: prompt {prompt_id!r} needs 'responses', a list of response objects.")
    if len(responses) < 2:
        raise InputError(
            f"{where}: prompt {prompt_id!r} has {len(responses)} response(s). Groups need at least 2 "
            "sampled responses to compare (GRPO-style); drop the prompt or add responses."
        )
    out = []
    for j, resp in enumerate(responses):
        rwhere = response_wheres[j] if response_wheres else f"{where} (prompt {prompt_id!r}, response {j})"
        if not isinstance(resp, dict):
            raise InputError(f"{rwhere}: a response must be a JSON object.")
        if "reward" not in resp:
            raise InputError(f"{rwhere}: missing 'reward' (a number).")
        reward = _number(resp["reward"], "reward", rwhere)
        accepted = resp.get("accepted", reward > threshold)
        if not isinstance(accepted, bool):
            raise InputError(f"{rwhere}: 'accepted' must be true or false, got {accepted!r}.")
        out.append((rwhere, resp, reward, accepted))
    return prompt_id, out


def _parse_group(obj, index: int, where: str, prompt_id: str, shaped: list, tokenizer, vocab_size: int):
    """A shaped prompt group (``_group_shape``) tokenised: its responses."""
    prompt_ids = _text_or_ids(obj, "prompt", "prompt_token_ids", where, tokenizer, vocab_size)
    if not prompt_ids:
        raise InputError(
            f"{where}: prompt {prompt_id!r} is empty; the first response token needs a prompt position "
            "to be predicted from."
        )
    out = []
    for j, (rwhere, resp, reward, accepted) in enumerate(shaped):
        ids = _text_or_ids(resp, "response", "response_token_ids", rwhere, tokenizer, vocab_size)
        if not ids:
            raise InputError(
                f"{rwhere}: the response is empty (no tokens); it has no log-probability to differentiate."
            )
        meta = {k: v for k, v in resp.items() if k not in RESPONSE_KEYS}
        meta.update({k: v for k, v in obj.items() if k not in GROUP_KEYS})
        tokens = tokenizer.batch_decode([[t] for t in ids]) if tokenizer is not None else None
        out.append(
            Response(
                prompt_index=index,
                prompt_id=prompt_id,
                response_id=str(resp.get("response_id", f"{prompt_id}/{j}")),
                reward=reward,
                accepted=accepted,
                prompt_ids=prompt_ids,
                response_ids=ids,
                meta=meta,
                response_tokens=tokens,
            )
        )
    return out


def _fit_context(r: Response, max_length: int, on_overflow: str) -> None:
    if r.length <= max_length:
        return
    if on_overflow == "truncate" and len(r.prompt_ids) < max_length:
        keep = max_length - len(r.prompt_ids)
        log.warning(
            "response %s: %d tokens exceed the model context %d; truncated to %d response tokens",
            r.response_id, r.length, max_length, keep,
        )
        r.response_ids = r.response_ids[:keep]
        return
    raise InputError(
        f"response {r.response_id!r} has {r.length} tokens (prompt {len(r.prompt_ids)} + response "
        f"{len(r.response_ids)}), more than the model's context of {max_length}. Shorten it, or set "
        "model.on_overflow: truncate to cut response tails (a prompt longer than the context cannot be kept)."
    )


def group_advantages(responses: list[Response]) -> None:
    """A_r = (reward_r − mean_p) / (std_p + 1e-6), std with Bessel's correction as in GRPO trainers."""
    by_prompt: dict[int, list[Response]] = {}
    for r in responses:
        by_prompt.setdefault(r.prompt_index, []).append(r)
    for group in by_prompt.values():
        rewards = np.array([r.reward for r in group])
        std = rewards.std(ddof=1) if len(rewards) > 1 else 0.0
        for r in group:
            r.advantage = float((r.reward - rewards.mean()) / (std + 1e-6))


def load_dataset(
    path: Path, tokenizer, vocab_size: int, max_length: int, threshold: float = 0.0, on_overflow: str = "error",
    fmt: str = "auto", columns: dict | None = None,
) -> Dataset:
    """Read, group, tokenise and check the data; every error names the file and line or row and the fix."""
    prompt_ids: list[str] = []
    responses: list[Response] = []
    for index, (where, obj, pid, shaped) in enumerate(_shaped_groups(Path(path), fmt, columns, threshold, True)):
        responses.extend(_parse_group(obj, index, where, pid, shaped, tokenizer, vocab_size))
        prompt_ids.append(pid)
    for r in responses:
        _fit_context(r, max_length, on_overflow)
    group_advantages(responses)
    return Dataset(prompt_ids=prompt_ids, responses=responses)


def configured_dataset(cfg, source) -> Dataset:
    """The dataset a job configuration names (the bundled example when data.path is unset), read with the
    model's tokenizer, vocabulary and context length (``source``: model.open_model's)."""
    return load_dataset(cfg.data.path or example_data_path(), source.tokenizer, source.vocab_size, source.max_length,
                        cfg.data.accept_threshold, cfg.model.on_overflow, cfg.data.format,
                        cfg.data.columns.model_dump(exclude_none=True))


def check_data_file(path: Path, fmt: str = "auto", columns: dict | None = None, threshold: float = 0.0) -> None:
    """The data file's existence, format, layout and group shapes, checked before the model and the heavy libraries
    load (seconds), so that a wrong path or a malformed line is said at once. What needs the tokenizer (text, token
    ids against the vocabulary, the context length) is checked when the data is loaded."""
    for _ in _shaped_groups(Path(path), fmt, columns, threshold, False):
        pass


def _shaped_groups(path: Path, fmt: str, columns: dict | None, threshold: float, announce: bool):
    """(where, group object, prompt id, shaped responses) of every prompt group, each group's shape checked and its
    prompt id unique; ``announce`` logs the layout read."""
    seen: set[str] = set()
    for index, (where, obj, response_wheres) in enumerate(read_groups(path, fmt, columns or {}, announce)):
        pid, shaped = _group_shape(obj, index, where, threshold, response_wheres)
        if pid in seen:
            raise InputError(f"{where}: prompt_id {pid!r} already appeared earlier; prompt ids must be unique.")
        seen.add(pid)
        yield where, obj, pid, shaped
    if not seen:
        raise InputError(f"data file {path} holds no prompt groups.")


def micro_batches(lengths: list[int], token_budget: int) -> list[list[int]]:
    """Length-sorted batches whose padded size (count × longest) stays within ``token_budget``.

    A sequence longer than the budget gets a batch of its own. Sorting by length keeps padding small.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        if current and (len(current) + 1) * longest > token_budget:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches
