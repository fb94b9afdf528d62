"""The statistics stage: from the summed contributions to the run's results — similarity statistics, token
influence rows, diagnostics summaries, validation, warnings and the environment — as the typed ``Results``."""

from __future__ import annotations

import json
import logging
import platform
from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np
import torch

import influence_job
from influence_job.base.memory import physical_bytes
from influence_job.inputs.config import JobConfig
from influence_job.inputs.data import Dataset
from influence_job.maths.diagnostics import offdiag_summary
from influence_job.maths.influence import score_summary
from influence_job.maths.similarity import matrix_stats
from influence_job.maths.validation import run_checks
from influence_job.outputs.results import (
    CheckpointInfo,
    Environment,
    Fingerprint,
    InfluenceSummary,
    KindSimilarity,
    MatrixStatistics,
    OffDiagonal,
    Performance,
    Results,
    ScoreSummary,
    Similarity,
    UnprojectedComparison,
    Validation,
)
from influence_job.run.stages import Totals

log = logging.getLogger("influence_job")


def assemble_results(cfg: JobConfig, ds: Dataset, cap, layout, totals: Totals, model_name: str, fp: dict,
                     device: torch.device, world: int, checkpoint: CheckpointInfo,
                     performance: Callable[[], Performance]) -> tuple[Results, dict[str, np.ndarray]]:
    """The typed result and the influence rows from the summed contributions. The maths returns plain numbers;
    each section is typed here, where it enters the result. ``performance`` is called last, so that the costs it
    measures include the statistics."""
    arrays = ds.arrays
    similarity = Similarity(
        raw=MatrixStatistics.model_validate(matrix_stats(totals.raw, arrays["prompt_index"], arrays["accepted"])),
        hinv=MatrixStatistics.model_validate(matrix_stats(totals.hinv, arrays["prompt_index"], arrays["accepted"])),
    )
    rows = _influence_rows(ds, cap, layout, totals.scores, cfg.influence.enabled)
    warnings = _data_warnings(cfg, rows)
    skipped_tokens = np.repeat(rows["skipped"], np.diff(rows["token_offsets"]))
    modules = totals.records
    failed = [f"{m.name} ({m.failed_factorisations})" for m in modules if m.failed_factorisations]
    validation = Validation.model_validate(run_checks(
        ds.n, len(rows["response_index"]), totals.raw, totals.hinv, rows["scores"], rows["entropy"], skipped_tokens,
        failed, sum(m.factorisations for m in modules), totals.fidelity, cfg.curvature.scope,
    ))
    scores = score_summary(rows)
    influence = InfluenceSummary(
        enabled=cfg.influence.enabled, rows=len(rows["response_index"]), skipped_rows=int(rows["skipped"].sum()),
        skipped_prompts=sorted({ds.prompt_ids[p] for p in rows["prompt_index"][rows["skipped"]]}),
        aggregate=cfg.influence.aggregate, exclude_self=cfg.influence.exclude_self,
        scores=None if scores is None else ScoreSummary.model_validate(scores),
    )
    results = Results(
        n_responses=ds.n, n_prompts=len(ds.prompt_ids), n_accepted=int(arrays["accepted"].sum()),
        n_rejected=int((~arrays["accepted"]).sum()), n_positions=cap.n_positions,
        n_response_tokens=int(layout.token_offsets[-1]), model=model_name, modules=modules, similarity=similarity,
        influence=influence,
        unprojected_comparison=(None if totals.fidelity is None
                                else UnprojectedComparison.model_validate(totals.fidelity)),
        curvature_similarity={kind: _kind_similarity(m) for kind, m in totals.curvature_similarity.items()},
        validation=validation, warnings=warnings, fingerprint=Fingerprint.model_validate(fp),
        checkpoint=checkpoint, config=cfg.model_dump(mode="json"), environment=_environment(device, world),
        finished_at=datetime.now(UTC).isoformat(timespec="seconds"), performance=performance(),
    )
    return results, rows


def token_strings(ds: Dataset) -> list[list[str]] | None:
    """Each response token decoded alone, when the model has a tokenizer."""
    if any(r.response_tokens is None for r in ds.responses):
        return None
    return [r.response_tokens for r in ds.responses]


def _data_warnings(cfg: JobConfig, rows: dict[str, np.ndarray]) -> list[str]:
    """Conditions that leave a run technically valid but empty of what a user came for; logged and kept."""
    warnings = []
    if cfg.influence.enabled and rows["skipped"].all():
        warnings.append(
            "no prompt has both accepted and rejected responses, so every token influence row was skipped "
            "(NaN scores). Check data.accept_threshold against the rewards, or give 'accepted' explicitly."
        )
    for text in warnings:
        log.warning("warning: %s", text)
    return warnings


def _influence_rows(ds: Dataset, cap, layout, scores: np.ndarray, enabled: bool) -> dict[str, np.ndarray]:
    """One row per response (columnar; a response's token values are a slice given by token_offsets)."""
    n_acc = np.zeros(len(ds.prompt_ids), dtype=int)
    n_all = np.zeros(len(ds.prompt_ids), dtype=int)
    for r in ds.responses:
        n_acc[r.prompt_index] += r.accepted
        n_all[r.prompt_index] += 1
    contrast = (n_acc > 0) & (n_acc < n_all)
    prompt_index = np.array([r.prompt_index for r in ds.responses])
    skipped = ~contrast[prompt_index] if enabled else np.ones(ds.n, dtype=bool)
    if not enabled:
        scores = np.full(int(layout.token_offsets[-1]), np.nan)
    spans = np.diff(layout.token_offsets)
    with np.errstate(invalid="ignore"):
        score_sum = np.add.reduceat(scores, layout.token_offsets[:-1]) if len(scores) else np.zeros(ds.n)
    return {
        "response_index": np.arange(ds.n),
        "prompt_index": prompt_index,
        "prompt_id": np.array([r.prompt_id for r in ds.responses]),
        "response_id": np.array([r.response_id for r in ds.responses]),
        "reward": np.array([r.reward for r in ds.responses]),
        "accepted": np.array([r.accepted for r in ds.responses]),
        "skipped": skipped,
        "n_tokens": spans,
        "score_sum": np.where(skipped, np.nan, score_sum),
        "token_offsets": layout.token_offsets,
        "metadata_json": np.array([json.dumps(r.meta, sort_keys=True) for r in ds.responses]),
        "token_ids": np.concatenate([np.array(r.response_ids, dtype=np.int64) for r in ds.responses]),
        "scores": scores,
        "entropy": np.concatenate(cap.entropy),
    }


def _environment(device: torch.device, world_size: int) -> Environment:
    import transformers

    return Environment(
        influence_job=influence_job.__version__, python=platform.python_version(), torch=torch.__version__,
        transformers=transformers.__version__, numpy=np.__version__,
        device=(torch.cuda.get_device_name(device) if device.type == "cuda"
                else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"),
        host=platform.node(), world_size=world_size, host_memory_bytes=physical_bytes(),
        gpu_memory_bytes=torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None,
    )


def _kind_similarity(mats: list[dict]) -> KindSimilarity:
    """Per module kind: the per-prompt cosine matrices averaged over that kind's modules, summarised."""
    frobenius = np.mean([m["frobenius"] for m in mats], axis=0)
    spectrum = np.mean([m["spectrum"] for m in mats], axis=0)
    bound = max((float(m["spectrum_bound"].max()) for m in mats if "spectrum_bound" in m), default=None)
    return KindSimilarity(
        modules=len(mats), frobenius_cos=OffDiagonal.model_validate(offdiag_summary(frobenius)),
        spectrum_cos=OffDiagonal.model_validate(offdiag_summary(spectrum)), spectrum_cos_bound=bound,
        frobenius_cos_matrix=frobenius.tolist())


