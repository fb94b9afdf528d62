"""The statistics stage: from the summed contributions to the run's results — similarity statistics, token
influence rows, diagnostics summaries, validation, warnings and the environment — as the typed ``Results``."""

from __future__ import annotations

import json
import logging
import platform

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
from influence_job.run.stages import Totals

log = logging.getLogger("influence_job")


def assemble_results(cfg: JobConfig, ds: Dataset, cap, layout, totals: Totals, model_name: str, fp: dict,
                     device: torch.device, world: int) -> tuple[dict, dict[str, np.ndarray]]:
    """Statistics, influence rows, diagnostics and validation from the summed contributions."""
    arrays = ds.arrays
    similarity = {
        "raw": matrix_stats(totals.raw, arrays["prompt_index"], arrays["accepted"]),
        "hinv": matrix_stats(totals.hinv, arrays["prompt_index"], arrays["accepted"]),
    }
    rows = _influence_rows(ds, cap, layout, totals.scores, cfg.influence.enabled)
    warnings = _data_warnings(cfg, rows)
    skipped_tokens = np.repeat(rows["skipped"], np.diff(rows["token_offsets"]))
    modules_out = totals.records
    failed = [f"{m['name']} ({m['failed_factorisations']})" for m in modules_out if m["failed_factorisations"]]
    validation = run_checks(
        ds.n, len(rows["response_index"]), totals.raw, totals.hinv, rows["scores"], rows["entropy"], skipped_tokens,
        failed, sum(m["factorisations"] for m in modules_out), totals.fidelity, cfg.curvature.scope,
    )
    results = {
        "n_responses": ds.n,
        "n_prompts": len(ds.prompt_ids),
        "n_accepted": int(arrays["accepted"].sum()),
        "n_rejected": int((~arrays["accepted"]).sum()),
        "n_positions": cap.n_positions,
        "n_response_tokens": int(layout.token_offsets[-1]),
        "model": model_name,
        "modules": modules_out,
        "similarity": similarity,
        "influence": {
            "enabled": cfg.influence.enabled,
            "rows": len(rows["response_index"]),
            "skipped_rows": int(rows["skipped"].sum()),
            "skipped_prompts": sorted({ds.prompt_ids[p] for p in rows["prompt_index"][rows["skipped"]]}),
            "aggregate": cfg.influence.aggregate,
            "exclude_self": cfg.influence.exclude_self,
            "scores": score_summary(rows),
        },
        "unprojected_comparison": totals.fidelity,
        "curvature_similarity": {kind: _kind_similarity(m) for kind, m in totals.curvature_similarity.items()},
        "validation": validation,
        "warnings": warnings,
        "fingerprint": fp,
        "config": cfg.model_dump(mode="json"),
        "environment": _environment(device, world),
    }
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


def _environment(device: torch.device, world_size: int) -> dict:
    import transformers

    return {
        "influence_job": influence_job.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"),
        "host": platform.node(),
        "world_size": world_size,
        "host_memory_bytes": physical_bytes(),
        "gpu_memory_bytes": torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None,
    }


def _kind_similarity(mats: list[dict]) -> dict:
    """Per module kind: the per-prompt cosine matrices averaged over that kind's modules, summarised."""
    frobenius = np.mean([m["frobenius"] for m in mats], axis=0)
    spectrum = np.mean([m["spectrum"] for m in mats], axis=0)
    bound = max((float(m["spectrum_bound"].max()) for m in mats if "spectrum_bound" in m), default=None)
    return {"modules": len(mats), "frobenius_cos": offdiag_summary(frobenius),
            "spectrum_cos": offdiag_summary(spectrum), "spectrum_cos_bound": bound,
            "frobenius_cos_matrix": frobenius}


