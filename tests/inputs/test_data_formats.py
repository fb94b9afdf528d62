"""Rollouts as RL trainers write them: flat JSON Lines (verl's rollout dump) and Parquet in, grouped
JSON Lines unchanged, chat-message prompts through the model's chat template, and influence_rows.parquet out."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import GROUPS, save_tiny_model, write_jsonl
from transformers import AutoTokenizer

from influence_job.cli.main import main


def run(capsys, model_dir, data: Path, out: Path, *extra) -> tuple[int, str]:
    code = main(["run", "--set", f"model.path={model_dir}", "--set", "model.dtype=float64",
                 "--set", "model.attn_implementation=eager", "--set", f"data.path={data}",
                 "--set", "compute.device=cpu", "--set", "projection.factor=4", *extra, "--output", str(out)])
    return code, capsys.readouterr().err


def flat_rows(prompt="input", response="output", reward="score", prompt_id=None):
    """GROUPS as one row per response, the way a trainer dumps them (extra keys: step, acc)."""
    rows = []
    for g in GROUPS:
        for r in g["responses"]:
            row = {prompt: g["prompt"], response: r["response"], reward: r["reward"], "step": 224}
            if "accepted" in r:
                row["accepted"] = r["accepted"]
            if prompt_id:
                row[prompt_id] = g["prompt_id"]
            rows.append(row)
    return rows


def write_parquet(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def load(out: Path) -> dict:
    with np.load(out / "similarity.npz") as s, np.load(out / "influence_rows.npz") as r:
        return {**{k: s[k] for k in ("raw", "hinv")}, **{k: r[k] for k in r.files}}


def test_grouped_verl_dump_and_parquet_give_identical_results(capsys, tiny_model_dir, tmp_path):
    grouped = write_jsonl(tmp_path / "grouped.jsonl", GROUPS)
    verl = write_jsonl(tmp_path / "0224.jsonl", flat_rows())  # verl: input, output, score, step
    table = write_parquet(tmp_path / "rollouts.parquet",
                          flat_rows(prompt="prompt", response="completion", reward="reward", prompt_id="uid"))
    outs = {}
    for name, data in (("grouped", grouped), ("verl", verl), ("parquet", table)):
        code, err = run(capsys, tiny_model_dir, data, tmp_path / name)  # no setting but data.path
        assert code == 0, err
        layout = "grouped layout (one prompt group per line)" if name == "grouped" else "flat layout"
        assert layout in err
        outs[name] = load(tmp_path / name)
    for name in ("verl", "parquet"):
        for key in ("raw", "hinv", "scores", "entropy", "token_ids", "token_offsets", "reward", "accepted",
                    "skipped", "prompt_index"):
            np.testing.assert_array_equal(outs[name][key], outs["grouped"][key], err_msg=f"{name}: {key}")
    assert list(outs["parquet"]["prompt_id"]) == list(outs["grouped"]["prompt_id"])  # uid is the prompt id
    assert list(outs["verl"]["prompt_id"][:3]) == ["p0", "p0", "p0"]  # grouped by identical prompt text
    assert json.loads(outs["verl"]["metadata_json"][0]) == {"step": 224}  # extra columns kept


def test_explicit_column_mapping(capsys, tiny_model_dir, tmp_path):
    rows = [{"q": r["input"], "a": r["output"], "r": r["score"], "group": r["pid"]}
            for r in flat_rows(prompt_id="pid")]
    data = write_jsonl(tmp_path / "custom.jsonl", rows)
    code, err = run(capsys, tiny_model_dir, data, tmp_path / "o", "--set", "data.columns.prompt=q",
                    "--set", "data.columns.response=a", "--set", "data.columns.reward=r",
                    "--set", "data.columns.prompt_id=group", "--set", "data.format=flat")
    assert code == 0, err
    r = json.loads((tmp_path / "o" / "results.json").read_text())
    assert r["n_prompts"] == 5 and r["n_responses"] == 13


def test_chat_prompts_use_the_models_chat_template(capsys, tmp_path):
    model_dir = save_tiny_model(tmp_path / "m", max_position_embeddings=256)  # room for the template's markers
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+3?"}]
    rows = [{"prompt": messages, "response": " 5", "reward": 1.0},
            {"prompt": messages, "response": " 6", "reward": -1.0}]
    data = write_jsonl(tmp_path / "chat.jsonl", rows)
    code, err = run(capsys, model_dir, data, tmp_path / "o")
    assert code == 0, err
    tok = AutoTokenizer.from_pretrained(model_dir)
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+3?<|im_end|>\n<|im_start|>assistant\n"
    expected = tok(text, add_special_tokens=False)["input_ids"]
    r = json.loads((tmp_path / "o" / "results.json").read_text())
    assert r["n_positions"] == 2 * (len(expected) + 2)  # both sequences: the templated prompt + 2 bytes
    from influence_job.inputs.data import load_dataset
    ds = load_dataset(data, tok, 260, 10_000)
    assert ds.responses[0].prompt_ids == expected


def test_chat_prompt_without_a_chat_template_is_a_clear_error(capsys, tmp_path):
    model_dir = save_tiny_model(tmp_path / "m")
    cfg = json.loads((model_dir / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (model_dir / "tokenizer_config.json").write_text(json.dumps(cfg))
    for extra in ("chat_template.jinja", "chat_template.json"):
        (model_dir / extra).unlink(missing_ok=True)
    data = write_jsonl(tmp_path / "chat.jsonl", [{"prompt": [{"role": "user", "content": "hi"}], "response": "x",
                                                  "reward": r} for r in (1.0, -1.0)])
    code, err = run(capsys, model_dir, data, tmp_path / "o")
    assert code == 2 and "has no chat template" in err and f"{data}:1" in err


@pytest.mark.parametrize("case,fragment", [
    ("missing mapped column", "data.columns.reward is 'points', but the table has no such column"),
    ("reward not a number", ".jsonl:3: 'reward' must be a finite number, got 'high'"),
    ("one response", "row 1: prompt 'p0' has 1 response(s)"),
    ("unreadable parquet", "cannot be read as Parquet"),
    ("no response column", "no column for the response"),
])
def test_bad_flat_input_names_the_row(capsys, tiny_model_dir, tmp_path, case, fragment):
    rows = flat_rows(prompt="prompt", response="response", reward="reward")
    extra = []
    if case == "missing mapped column":
        extra = ["--set", "data.columns.reward=points"]
    elif case == "reward not a number":
        rows[2]["reward"] = "high"
    elif case == "one response":
        rows = rows[:1] + rows[3:]
        rows[0]["prompt"] = "a lonely prompt"
    elif case == "no response column":
        rows = [{k: v for k, v in r.items() if k != "response"} for r in rows]
    if case == "unreadable parquet":
        data = tmp_path / "broken.parquet"
        data.write_bytes(b"PAR1 this is not parquet")
    elif case == "reward not a number":  # Parquet columns have one type; JSON Lines rows need not
        data = write_jsonl(tmp_path / "rows.jsonl", rows)
    else:
        data = write_parquet(tmp_path / "rows.parquet", rows)
    code, err = run(capsys, tiny_model_dir, data, tmp_path / "o", *extra)
    assert code == 2, err
    assert fragment in err and "Traceback" not in err


def test_influence_rows_parquet_opens_in_pandas_and_duckdb(capsys, tiny_model_dir, tiny_data, tmp_path):
    code, err = run(capsys, tiny_model_dir, tiny_data, tmp_path / "o")
    assert code == 0, err
    path = tmp_path / "o" / "influence_rows.parquet"
    ref = load(tmp_path / "o")
    df = pd.read_parquet(path)
    assert list(df["response_id"]) == list(ref["response_id"]) and list(df["accepted"]) == list(ref["accepted"])
    np.testing.assert_array_equal(df["reward"].to_numpy(), ref["reward"])
    np.testing.assert_array_equal(df["score_sum"].to_numpy(), ref["score_sum"])
    off = ref["token_offsets"]
    for i in range(len(df)):
        np.testing.assert_array_equal(np.asarray(df["scores"][i], dtype=float), ref["scores"][off[i]:off[i + 1]])
        np.testing.assert_array_equal(df["token_ids"][i], ref["token_ids"][off[i]:off[i + 1]])
        np.testing.assert_array_equal(df["entropy"][i], ref["entropy"][off[i]:off[i + 1]])
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert "".join(df["tokens"][0]) == tok.decode(df["token_ids"][0])
    skipped = duckdb.sql(f"select count(*) from '{path}' where skipped").fetchall()[0][0]
    assert skipped == int(ref["skipped"].sum())
    by_prompt = duckdb.sql(f"select prompt_id, sum(len(scores)) from '{path}' group by prompt_id order by 1").fetchall()
    counts = {p: int(n) for p, n in by_prompt}
    assert sum(counts.values()) == len(ref["scores"])


def test_default_prompt_ids_are_what_the_usage_page_says(tmp_path):
    """Without a prompt id, a grouped file's prompts are line<N> and a flat table's p<K> (from 0), as docs/usage.md
    says."""
    from influence_job.inputs.data import load_dataset

    tokenizer = AutoTokenizer.from_pretrained(save_tiny_model(tmp_path / "m"))
    groups = [{k: v for k, v in g.items() if k != "prompt_id"} for g in GROUPS]
    grouped = load_dataset(write_jsonl(tmp_path / "g.jsonl", groups), tokenizer, 1000, 512)
    flat = load_dataset(write_jsonl(tmp_path / "f.jsonl", flat_rows()), tokenizer, 1000, 512)
    assert grouped.prompt_ids[:2] == ["line1", "line2"] and flat.prompt_ids[:2] == ["p0", "p1"]
    usage = (Path(__file__).parents[2] / "docs" / "usage.md").read_text()
    assert "a grouped file's\n  prompt is `line<N>`" in usage and "a flat table's `p<K>`" in usage
