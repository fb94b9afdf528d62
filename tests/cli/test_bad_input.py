"""Each user mistake gets a one-paragraph message naming the problem and the fix, and exit code 2."""

import json

import pytest
import torch
from conftest import GROUPS, save_tiny_model, write_jsonl

from influence_job.cli.main import main


def run_cli(capsys, *args):
    code = main(["run", "-q", *args])
    err = capsys.readouterr().err
    return code, err


def base_args(model_dir, data, tmp_path):
    return ["--set", f"model.path={model_dir}", "--set", "model.builtin=null", "--set", f"data.path={data}",
            "--set", "compute.device=cpu", "--output", str(tmp_path / "out")]


def expect_error(capsys, args, *fragments):
    code, err = run_cli(capsys, *args)
    assert code == 2, err
    assert "Traceback" not in err
    assert err.startswith("influence-job: error:")
    for f in fragments:
        assert f in err, err
    return err


@pytest.mark.parametrize("mutate,fragment", [
    (lambda g: g["responses"][1].pop("reward"), "missing 'reward'"),
    (lambda g: g["responses"][0].update(reward="high"), "'reward' must be a finite number"),
    (lambda g: g["responses"][0].update(accepted="yes"), "'accepted' must be true or false"),
    (lambda g: g.pop("prompt"), "missing 'prompt'"),
    (lambda g: g.update(prompt=7), "'prompt' must be a string"),
    (lambda g: g["responses"][0].update(response_token_ids=[1, 99999]), "outside the model's vocabulary"),
])
def test_missing_or_mistyped_fields(capsys, tiny_model_dir, tmp_path, mutate, fragment):
    groups = json.loads(json.dumps(GROUPS))
    mutate(groups[1])
    data = write_jsonl(tmp_path / "d.jsonl", groups)
    expect_error(capsys, base_args(tiny_model_dir, data, tmp_path), fragment, f"{data}:2")


def test_empty_response(capsys, tiny_model_dir, tmp_path):
    groups = json.loads(json.dumps(GROUPS))
    groups[0]["responses"][2]["response"] = ""
    data = write_jsonl(tmp_path / "d.jsonl", groups)
    expect_error(capsys, base_args(tiny_model_dir, data, tmp_path), "response is empty", "response 2")


def test_prompt_with_one_response(capsys, tiny_model_dir, tmp_path):
    groups = json.loads(json.dumps(GROUPS))
    groups[3]["responses"] = groups[3]["responses"][:1]
    data = write_jsonl(tmp_path / "d.jsonl", groups)
    expect_error(capsys, base_args(tiny_model_dir, data, tmp_path), "has 1 response(s)", "at least 2")


def test_sequence_longer_than_context_rejected_or_truncated(capsys, tiny_model_dir, tmp_path):
    groups = json.loads(json.dumps(GROUPS))
    groups[0]["responses"][0]["response"] = " " + "7" * 80  # context is 48 positions
    data = write_jsonl(tmp_path / "d.jsonl", groups)
    expect_error(capsys, base_args(tiny_model_dir, data, tmp_path), "more than the model's context of 48",
                 "model.on_overflow: truncate")
    code = main(["run", *base_args(tiny_model_dir, data, tmp_path), "--set", "model.on_overflow=truncate"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "truncated to" in captured.err


def test_no_module_matches(capsys, tiny_model_dir, tiny_data, tmp_path):
    expect_error(capsys, [*base_args(tiny_model_dir, tiny_data, tmp_path), "--set", "modules=[attn_c]"],
                 "no linear module's name contains", "q_proj")


def test_missing_model_path(capsys, tiny_data, tmp_path):
    expect_error(capsys, base_args(tmp_path / "nowhere", tiny_data, tmp_path), "does not exist")


def test_directory_without_config(capsys, tiny_data, tmp_path):
    (tmp_path / "empty").mkdir()
    expect_error(capsys, base_args(tmp_path / "empty", tiny_data, tmp_path), "no config.json")


def test_non_causal_lm_model(capsys, tiny_data, tmp_path):
    from transformers import ViTConfig, ViTModel

    ViTModel(ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8,
                       image_size=8, patch_size=4)).save_pretrained(tmp_path / "vit")
    expect_error(capsys, base_args(tmp_path / "vit", tiny_data, tmp_path), "not a causal language model")


def test_unwritable_output_dir(capsys, tiny_model_dir, tiny_data, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    args = base_args(tiny_model_dir, tiny_data, tmp_path)[:-1] + [str(blocker / "out")]
    expect_error(capsys, args, f"{blocker} is a file, not a directory", "Choose a path whose parent is a directory")


def test_nan_in_gradients(capsys, tiny_data, tmp_path):
    model_dir = save_tiny_model(tmp_path / "nan-model")
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64)
    with torch.no_grad():
        m.model.layers[1].mlp.up_proj.weight[0, 0] = float("nan")
    m.save_pretrained(model_dir)
    expect_error(capsys, base_args(model_dir, tiny_data, tmp_path), "non-finite values", "NaN")
    assert not (tmp_path / "out").exists()  # no result that hides the problem


def test_text_without_tokenizer(capsys, tiny_data, tmp_path):
    model_dir = save_tiny_model(tmp_path / "no-tok")
    for f in model_dir.glob("tokenizer*"):
        f.unlink()
    expect_error(capsys, base_args(model_dir, tiny_data, tmp_path), "has no tokenizer", "prompt_token_ids")


@pytest.mark.parametrize("override,fragment", [
    ("curvature.source=tokens", "curvature.source"),
    ("projection.factr=8", "projection.factr: unknown key"),
    ("compute.micro_batch_tokens=0", "compute.micro_batch_tokens"),
    ("compute.gram_dtype=float16", "compute.gram_dtype: Input should be 'auto', 'float64', 'float32' or 'tf32'"),
    ("model={builtin: tiny-qwen2, path: /x}", "exclusive"),
])
def test_invalid_configuration_names_field(capsys, override, fragment, tmp_path):
    err = expect_error(capsys, ["--set", override, "--output", str(tmp_path / "o")], fragment)
    assert "invalid configuration" in err


def test_unreadable_config_file(capsys, tmp_path):
    expect_error(capsys, ["--config", str(tmp_path / "missing.yaml")], "cannot read configuration")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    expect_error(capsys, ["--config", str(tmp_path / "list.yaml")], "must be a YAML mapping")


def test_cuda_requested_without_a_gpu(capsys, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a visible GPU")
    expect_error(capsys, ["--set", "compute.device=cuda", "--output", str(tmp_path / "o")], "no CUDA device")


@pytest.mark.parametrize("content,fragment", [
    (None, "does not exist"),
    ('{"prompt": "x", "responses": [\n', "not valid JSON"),
    ('{"prompt": "x", "responses": [{"response": "a", "reward": 1}]}\n', "has 1 response(s)"),
    ('{"prompt": "x", "responses": [{"response": "a"}, {"response": "b", "reward": 0}]}\n', "missing 'reward'"),
])
@pytest.mark.parametrize("command", ["run", "plan"])
def test_a_bad_data_file_is_said_before_the_model_and_heavy_libraries_load(tmp_path, content, fragment, command):
    """A wrong path or a malformed line is reported before torch, transformers or the model are imported (they take
    seconds): the process ends with exit 2 and neither library was ever loaded."""
    import subprocess
    import sys

    data = tmp_path / "d.jsonl"
    if content is not None:
        data.write_text(content)
    probe = ("import sys; from influence_job.cli.main import main; code = main(sys.argv[1:]); "
             "print('loaded:', sorted(m for m in ('torch', 'transformers') if m in sys.modules)); sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", probe, command, "--set", f"data.path={data}",
                           "--output", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert fragment in proc.stderr and "loaded: []" in proc.stdout
