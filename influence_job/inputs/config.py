"""The job's configuration: a pydantic model loaded from YAML, with command-line overrides.

Every field carries its documentation (``influence-job config --explain`` prints it) and every invalid
value is rejected with a message naming the field and the fix. The defaults reproduce the original
diagnostic: factor-32 Rademacher projection with no cap, all seven linear module kinds, token-level
curvature in global scope with automatic damping.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MODULE_KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(Section):
    builtin: Literal["tiny-qwen2", "qwen2.5-1.5b-random"] | None = Field(
        None,
        description="A model built in code with seeded random weights: 'tiny-qwen2' (the default run and "
        "tests) or 'qwen2.5-1.5b-random' (Qwen2.5-1.5B's shape, for benchmarks). Exclusive with 'path'. "
        "With neither set, the job uses tiny-qwen2.",
        json_schema_extra={"default_text": "tiny-qwen2 when model.path is unset"},
    )
    path: Path | None = Field(
        None, description="A local Hugging Face causal-LM directory (config.json, weights, tokenizer)."
    )
    dtype: Literal["float32", "bfloat16", "float16", "float64"] = Field(
        "float32", description="Dtype the model runs its forward and backward passes in."
    )
    attn_implementation: Literal["sdpa", "eager"] = Field(
        "sdpa", description="Attention kernel passed to transformers."
    )
    seed: int = Field(0, description="Seed of the built-in models' random weights.")
    on_overflow: Literal["error", "truncate"] = Field(
        "error",
        description="What to do with a prompt+response longer than the model's context: 'error' stops "
        "with a message naming the response; 'truncate' cuts the response's tail and warns.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if self.builtin is None and self.path is None:
            self.builtin = "tiny-qwen2"
        if self.builtin is not None and self.path is not None:
            raise ValueError("model.builtin and model.path are exclusive: keep one of them")
        return self


class ColumnsConfig(Section):
    """Which column of a flat table (one row per response) holds each field; unset: the first default present."""

    prompt: str | None = Field(None, description="Prompt text or chat messages.",
                               json_schema_extra={"default_text": "prompt, else input"})
    response: str | None = Field(None, description="Response text.",
                                 json_schema_extra={"default_text": "response, else completion, else output"})
    reward: str | None = Field(None, description="Reward (a number).",
                               json_schema_extra={"default_text": "reward, else score"})
    prompt_id: str | None = Field(
        None, description="Groups responses by prompt; without one, rows with identical prompts form a group.",
        json_schema_extra={"default_text": "prompt_id, else uid"})
    response_id: str | None = Field(None, description="Response id (default: <prompt id>/<index>).",
                                    json_schema_extra={"default_text": "response_id"})
    accepted: str | None = Field(None, description="Explicit accepted flag (default: reward > accept_threshold).",
                                 json_schema_extra={"default_text": "accepted"})
    prompt_token_ids: str | None = Field(None, description="Pre-tokenised prompt (exact input, preferred).",
                                         json_schema_extra={"default_text": "prompt_token_ids"})
    response_token_ids: str | None = Field(None, description="Pre-tokenised response (exact input, preferred).",
                                           json_schema_extra={"default_text": "response_token_ids"})


class DataConfig(Section):
    path: Path | None = Field(
        None,
        description="JSON Lines or Parquet file (docs/usage.md, Input data). Empty: the bundled example "
        "(8 math prompts, 32 rewarded responses).",
        json_schema_extra={"default_text": "the bundled example data"},
    )
    format: Literal["auto", "grouped", "flat"] = Field(
        "auto",
        description="'grouped': one prompt group per JSON line; 'flat': one response per row (JSON Lines or "
        "Parquet, e.g. a verl rollout dump); 'auto': Parquet is flat, a JSON Lines file is grouped when its "
        "first object has 'responses'.",
    )
    columns: ColumnsConfig = Field(default_factory=ColumnsConfig)
    accept_threshold: float = Field(
        0.0, description="A response is accepted when reward > accept_threshold, unless it says 'accepted'."
    )


class ProjectionConfig(Section):
    kind: Literal["rademacher", "none"] = Field(
        "rademacher",
        description="'rademacher': two-sided random ±1/sqrt(k) projection; 'none': identity (exact, "
        "D = d_in*d_out, for small models only).",
    )
    factor: int = Field(32, ge=1, description="k_in = max(1, d_in // factor), k_out = max(1, d_out // factor).")
    max_hessian_dim: int = Field(
        -1, description="Cap on D = k_in*k_out (both sides shrunk in proportion); -1 means no cap."
    )
    seed: int = Field(0, description="Global seed; each module's matrices derive from it and its name.")

    @field_validator("max_hessian_dim")
    @classmethod
    def _cap(cls, v: int) -> int:
        if v != -1 and v < 1:
            raise ValueError("must be -1 (no cap) or a positive dimension")
        return v


class CurvatureConfig(Section):
    source: Literal["token", "response"] = Field(
        "token",
        description="'token': H = sum_t g_t g_t^T + λI over token positions (the default diagnostic); "
        "'response': H = G^T G + λI over response gradients (cheap).",
    )
    scope: Literal["global", "per_prompt"] = Field(
        "global",
        description="'global': one H per module from all responses; 'per_prompt': one H per prompt, "
        "HINV_ij = (g_i^T H_p(i)^-1 g_j + g_i^T H_p(j)^-1 g_j) / 2.",
    )
    damping: Literal["auto"] | float = Field(
        "auto", description="'auto': λ = 0.1 * tr(H - λI) / D (0.1 × mean eigenvalue); or a positive number."
    )
    solver: Literal["auto", "kernel", "dense"] = Field(
        "auto",
        description="'kernel': N×N / T×T identities, no D×D matrix; 'dense': D×D Cholesky; 'auto': the "
        "cheaper exact route per module by a flop estimate.",
    )


    @field_validator("damping", mode="before")
    @classmethod
    def _damping(cls, v):
        """One sentence for every wrong value (a union type would report each alternative separately)."""
        if v == "auto":
            return v
        if isinstance(v, str):  # YAML reads 1e-3 (no dot) as a string
            try:
                v = float(v)
            except ValueError:
                pass
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0:
            return float(v)
        raise ValueError(f"must be 'auto' or a positive number such as 0.001, got {v!r}")


class InfluenceConfig(Section):
    enabled: bool = Field(True, description="Emit the token influence rows (one per response).")
    aggregate: Literal["sum", "mean", "advantage"] = Field(
        "sum",
        description="'sum' of accepted minus sum of rejected; 'mean' divides each side by its count; "
        "'advantage': the prompt's policy-gradient direction Σ_r A_r g_r over all its responses "
        "(signed group advantages, no accepted/rejected split).",
    )
    exclude_self: bool = Field(False, description="Drop the response's own term from its tokens' scores.")


class DiagnosticsConfig(Section):
    unprojected_module: str | None = Field(
        "auto",
        description="Module for the exact unprojected comparison: 'auto' is the middle layer's k_proj "
        "(or first selected kind); a qualified module name; null disables it.",
    )
    curvature_similarity: bool = Field(
        True, description="Cosine between per-prompt curvatures and their spectra, per module kind."
    )
    curvature_similarity_layers: Literal["middle", "all"] = Field(
        "middle", description="Which layers' modules the curvature similarity uses."
    )


class ComputeConfig(Section):
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="'auto' takes CUDA when present.")
    micro_batch_tokens: int = Field(
        8192, ge=1, description="Token budget of one micro-batch (sequences × padded length)."
    )
    factor_dtype: Literal["float32", "bfloat16", "float64"] = Field(
        "float32", description="Storage dtype of the per-position factors u, v (all modules, all positions)."
    )
    gram_dtype: Literal["auto", "float64", "float32", "tf32"] = Field(
        "auto", description="Dtype of the dense token Gram's products G_tok^T G_tok. With float32 or tf32 the "
        "factor of that Gram only preconditions: every solve is refined in float64 against the exact curvature "
        "(applied through the factors), so results stay float64 solves (a refinement that stalls falls back to "
        "float64 products), for a few float64 passes over the token rows (bench/gram_dtype_error.py measures "
        "both); factorisation is float64. 'auto', per factorisation: tf32 on CUDA where the products it saves "
        "(TF32 GEMMs run several times faster than float64's) outweigh the refinement steps it adds, else "
        "float64; float64 on the CPU, "
        "where cheaper products save nothing."
    )
    token_chunk: int = Field(
        4096, ge=1,
        description="Bounds the working memory of token-row products: dense Grams and solves hold at most "
        "token_chunk × D values of them at a time (D: the module's projected size).",
    )
    timeout_seconds: float = Field(
        1800, gt=0,
        description="Under torchrun: how long a collective may wait for the other ranks before the run "
        "stops with an error naming the rank and the step (a dead rank never hangs the others).",
    )


class ValidationConfig(Section):
    fidelity_sigma: float = Field(
        3.0,
        gt=0,
        description="The projection-fidelity check passes when the projected self-dot mean is within this "
        "many standard deviations of the unprojected one, two-sided; the standard deviation is a bound for "
        "this Rademacher sketch on this module's own gradients (docs/usage.md, Validation checks).",
    )


class MetricsConfig(Section):
    dir: Path | None = Field(
        None,
        description="prometheus-client multiprocess directory shared with `influence-job exporter`; empty: "
        "$PROMETHEUS_MULTIPROC_DIR, or no live metrics.",
        json_schema_extra={"default_text": "$PROMETHEUS_MULTIPROC_DIR if set, else none"},
    )
    pushgateway: str | None = Field(
        None, description="Pushgateway URL for the final summary; empty: $INFLUENCE_PUSHGATEWAY, or no push.",
        json_schema_extra={"default_text": "$INFLUENCE_PUSHGATEWAY if set, else none"},
    )
    job: str = Field("influence_job", min_length=1, description="Pushgateway grouping label 'job'.")
    instance: str | None = Field(None, description="Pushgateway grouping label 'instance'; empty: the host name.",
                                 json_schema_extra={"default_text": "the host name"})
    trace_step: int | None = Field(
        None, ge=0, description="The training step of a trace's run (`influence-job trace` sets it, with instance "
        "the trace's name): a Pushgateway grouping label 'step', so that each step keeps its own summary and the "
        "dashboard counts a trace's finished and failed steps.")


class OutputConfig(Section):
    dir: Path = Field(
        Path("influence-output"),
        description="Directory the run writes, replaced atomically as a whole. An existing directory is replaced "
        "only when it is empty or an earlier influence-job output (it holds the .influence-job marker and "
        "nothing else than the result files); anything else is refused, as are '.', '..', '/', the home "
        "directory and any parent of the working directory.",
    )
    checkpoint_dir: Path | None = Field(
        None,
        description="Where each module's contribution is saved as soon as it is done, so that an interrupted "
        "run resumes by repeating its command. Removed after a successful run unless keep_checkpoint.",
        json_schema_extra={"default_text": "<output.dir>.ckpt"},
    )
    keep_checkpoint: bool = Field(
        False, description="Keep the checkpoint directory after a successful run (`run --keep-checkpoint`)."
    )


class JobConfig(Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    objective: Literal["log_prob", "advantage_log_prob"] = Field(
        "log_prob", description="L_r = Σ_t log π(y_t | prompt, y_<t), or A_r · L_r with the group advantage."
    )
    modules: list[str] = Field(
        default_factory=lambda: list(MODULE_KINDS),
        min_length=1,
        description="A linear module is selected when its qualified name contains one of these strings.",
    )
    positions: Literal["all", "response"] = Field(
        "all",
        description="Positions summed into a response gradient: 'all' (prompt included, exact), or "
        "'response' (the positions that predict response tokens, as the original system did).",
    )
    projection: ProjectionConfig = Field(default_factory=ProjectionConfig)
    curvature: CurvatureConfig = Field(default_factory=CurvatureConfig)
    influence: InfluenceConfig = Field(default_factory=InfluenceConfig)
    diagnostics: DiagnosticsConfig = Field(default_factory=DiagnosticsConfig)
    compute: ComputeConfig = Field(default_factory=ComputeConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
