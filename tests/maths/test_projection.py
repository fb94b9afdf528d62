"""Projection matrices and dimensions, and the original report's table for Qwen2.5-1.5B."""

import math

import pytest
import torch

from influence_job.inputs.config import ProjectionConfig
from influence_job.inputs.model import qwen2_1_5b_config_dict, select_modules
from influence_job.maths.projection import projected_dims, projection_matrices, rademacher


def test_rademacher_entries_and_determinism():
    P = rademacher(12, 40, seed=5, name="model.layers.3.mlp.up_proj", side="in")
    assert P.shape == (12, 40)
    assert set(torch.unique(P).tolist()) == {-1 / math.sqrt(12), 1 / math.sqrt(12)}
    assert torch.equal(P, rademacher(12, 40, seed=5, name="model.layers.3.mlp.up_proj", side="in"))
    assert not torch.equal(P, rademacher(12, 40, seed=6, name="model.layers.3.mlp.up_proj", side="in"))
    assert not torch.equal(P, rademacher(12, 40, seed=5, name="model.layers.4.mlp.up_proj", side="in"))
    # E[PᵀP] = I: the empirical mean over many draws approaches the identity
    mean = sum(rademacher(4, 6, 0, f"m{i}", "in").T @ rademacher(4, 6, 0, f"m{i}", "in") for i in range(400)) / 400
    assert torch.allclose(mean, torch.eye(6, dtype=torch.float64), atol=0.15)


def test_dims_factor_cap_and_none():
    cfg = ProjectionConfig(factor=32)
    d = projected_dims(8960, 1536, cfg)
    assert (d.k_in, d.k_out, d.D) == (280, 48, 13440)
    assert projected_dims(10, 10, cfg).D == 1  # max(1, ·) on both sides
    capped = projected_dims(1536, 8960, ProjectionConfig(factor=32, max_hessian_dim=4096))
    assert capped.D <= 4096 and capped.k_out > capped.k_in
    assert projected_dims(16, 24, ProjectionConfig(kind="none")).D == 384
    identity = ProjectionConfig(kind="none")
    assert projection_matrices("x", projected_dims(16, 24, identity), identity) is None


def test_qwen2_5_1_5b_projection_table_from_config_alone():
    """Built on the meta device: no weights. docs/method.md's table at factor 32."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    fields = {k: v for k, v in qwen2_1_5b_config_dict().items() if k != "architectures"}
    with torch.device("meta"):
        model = Qwen2ForCausalLM(Qwen2Config(**fields))
    mods = select_modules(model, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    assert len(mods) == 196
    cfg = ProjectionConfig(factor=32)
    table = {}
    for name, m in mods:
        d = projected_dims(m.in_features, m.out_features, cfg)
        table.setdefault(name.rsplit(".", 1)[-1], set()).add((d.k_in, d.k_out, d.D, d.hessian_peak_mb))
    assert table == {
        "q_proj": {(48, 48, 2304, 40)}, "o_proj": {(48, 48, 2304, 40)},
        "k_proj": {(48, 8, 384, 1)}, "v_proj": {(48, 8, 384, 1)},
        "gate_proj": {(48, 280, 13440, 1378)}, "up_proj": {(48, 280, 13440, 1378)},
        "down_proj": {(280, 48, 13440, 1378)},
    }


@pytest.mark.parametrize("bad", [0, -2])
def test_invalid_cap_rejected(bad):
    with pytest.raises(ValueError, match="max_hessian_dim"):
        ProjectionConfig(max_hessian_dim=bad)
