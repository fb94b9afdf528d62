"""The data stage: prompt groups from JSON Lines, tokenised, labelled, and cut into micro-batches.

Responses keep input order (prompt order, then response order) everywhere; micro-batches are a
length-sorted permutation of them, and the capture stage puts results back in input order.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from influence_job.errors import InputError

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

    def arrays(self) -> dict[str, np.ndarray]:
        """Per-response arrays in input order: what similarity.npz carries."""
        return {
            "prompt_index": np.array([r.prompt_index for r in self.responses], dtype=np.int64),
            "accepted": np.array([r.accepted for r in self.responses], dtype=bool),
            "reward": np.array([r.reward for r in self.responses], dtype=np.float64),
            "advantage": np.array([r.advantage for r in self.responses], dtype=np.float64),
        }


def example_data_path() -> Path:
    return Path(str(resources.files("influence_job").joinpath("examples/grpo_math.jsonl")))


def _where(path: Path, line: int) -> str:
    return f"{path}:{line}"


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


def _text_or_ids(obj: dict, text_key: str, ids_key: str, where: str, tokenizer, vocab_size: int) -> list[int]:
    if ids_key in obj:
        return _token_list(obj[ids_key], ids_key, where, vocab_size)
    if text_key not in obj:
        raise InputError(f"{where}: missing '{text_key}' (text) or '{ids_key}' (token ids).")
    text = obj[text_key]
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


def _parse_group(obj, index: int, where: str, tokenizer, vocab_size: int, threshold: float):
    if not isinstance(obj, dict):
        raise InputError(f"{where}: each line must be a JSON object (one prompt group), got {type(obj).__name__}.")
    prompt_id = str(obj.get("prompt_id", f"line{index + 1}"))
    prompt_ids = _text_or_ids(obj, "prompt", "prompt_token_ids", where, tokenizer, vocab_size)
    if not prompt_ids:
        raise InputError(
            f"{where}: prompt {prompt_id!r} is empty; the first response token needs a prompt position "
            "to be predicted from."
        )
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
        rwhere = f"{where} (prompt {prompt_id!r}, response {j})"
        if not isinstance(resp, dict):
            raise InputError(f"{rwhere}: a response must be a JSON object.")
        if "reward" not in resp:
            raise InputError(f"{rwhere}: missing 'reward' (a number).")
        reward = _number(resp["reward"], "reward", rwhere)
        accepted = resp.get("accepted", reward > threshold)
        if not isinstance(accepted, bool):
            raise InputError(f"{rwhere}: 'accepted' must be true or false, got {accepted!r}.")
        ids = _text_or_ids(resp, "response", "response_token_ids", rwhere, tokenizer, vocab_size)
        if not ids:
            raise InputError(
                f"{rwhere}: the response is empty (no tokens); it has no log-probability to differentiate."
            )
        meta = {k: v for k, v in resp.items() if k not in RESPONSE_KEYS}
        meta.update({k: v for k, v in obj.items() if k not in GROUP_KEYS})
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
            )
        )
    return prompt_id, out


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
    path: Path, tokenizer, vocab_size: int, max_length: int, threshold: float = 0.0, on_overflow: str = "error"
) -> Dataset:
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise InputError(f"data file {path} does not exist. Set data.path to a JSON Lines file.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"data file {path} cannot be read as UTF-8 text: {exc}") from None
    prompt_ids: list[str] = []
    responses: list[Response] = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = _where(path, lineno)
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            at = f"column {exc.colno}" if exc.msg.endswith(" at") else f"at column {exc.colno}"
            raise InputError(
                f"{where}: this line is not valid JSON: {exc.msg} {at}. Each line must be one JSON object "
                "(one prompt group)."
            ) from None
        pid, group = _parse_group(obj, len(prompt_ids), where, tokenizer, vocab_size, threshold)
        if pid in prompt_ids:
            raise InputError(f"{where}: prompt_id {pid!r} already appeared earlier; prompt ids must be unique.")
        prompt_ids.append(pid)
        responses.extend(group)
    if not responses:
        raise InputError(f"data file {path} holds no prompt groups.")
    for r in responses:
        _fit_context(r, max_length, on_overflow)
    group_advantages(responses)
    return Dataset(prompt_ids=prompt_ids, responses=responses)


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
