"""The job as stages over plain data, each a timed phase: load (config, data, model, fingerprint, checkpoint)
→ capture (u, v, G of the modules still to do) → exchange (factors to the ranks that own modules) →
curvature_solve (one module at a time; each contribution saved to the checkpoint as it is done) → reduce
(every module's contribution summed in module order) → statistics (statistics, influence rows,
diagnostics, validation, the typed results) → write (the output directory, atomically)."""

from __future__ import annotations

import json
import logging
import platform
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import torch

import influence_job
from influence_job.base.memory import peak_rss_bytes, physical_bytes
from influence_job.inputs.config import JobConfig
from influence_job.inputs.data import Dataset, configured_dataset
from influence_job.inputs.model import choose_unprojected, layer_index, load_model, open_model, select_modules
from influence_job.maths.capture import ModuleFactors, capture
from influence_job.maths.diagnostics import module_curvature_similarity, offdiag_summary, unprojected_comparison
from influence_job.maths.engine import make_layout, process_module
from influence_job.maths.influence import score_summary
from influence_job.maths.similarity import matrix_stats, pair_masks, per_prompt_dot_means
from influence_job.maths.validation import run_checks
from influence_job.monitoring.metrics import JobMetrics
from influence_job.outputs.report import render_report
from influence_job.outputs.report_html import render_html
from influence_job.outputs.results import Results
from influence_job.outputs.tables import influence_rows_table, parquet_bytes
from influence_job.outputs.writing import check_target, json_safe, npz_bytes, write_output_dir
from influence_job.planning.assignment import assign_modules
from influence_job.planning.estimate import module_costs, runs_similarity, similarity_layers
from influence_job.planning.plan import make_plan
from influence_job.planning.profiles import device_profile
from influence_job.planning.workload import workload_of
from influence_job.run.checkpoint import (
    Checkpoint,
    ContributionStore,
    MemoryStore,
    ModuleContribution,
    check_checkpoint_dir,
    checkpoint_dir,
    config_part,
    fingerprint,
    prepare,
)
from influence_job.run.distributed import (
    Comm,
    exchange_modules,
    init_comm,
    local_shard,
    merge_metadata,
)
from influence_job.run.progress import Progress
from influence_job.run.stops import Stopped, committing

log = logging.getLogger("influence_job")


@dataclass
class RunResult:
    results: dict
    raw: np.ndarray
    hinv: np.ndarray
    rows: dict[str, np.ndarray]
    phase_seconds: dict[str, float] = field(default_factory=dict)


class _Phases:
    """Times each phase, logs its start and end, and reports both to the live metrics."""

    def __init__(self, metrics: JobMetrics | None):
        self.seconds: dict[str, float] = {}
        self.metrics = metrics

    @contextmanager
    def __call__(self, name: str):
        try:
            log.info("[%s] ...", name)
            if self.metrics:
                self.metrics.phase_started(name, time.time())
            t0 = time.perf_counter()
            yield
        except Stopped as stop:
            stop.phase = stop.phase or name  # the innermost phase names the stop
            raise
        self.seconds[name] = time.perf_counter() - t0
        if self.metrics:
            self.metrics.phase_done(name, self.seconds[name])
        log.info("[%s] done in %.2f s", name, self.seconds[name])

    def book_apart(self, name: str, part: str, seconds: float) -> None:
        """Book ``seconds`` of phase ``name`` as a phase of its own, ``part``: work that had to run interleaved
        with it (the diagnostics need each module's factors, which are freed as soon as its solve is done)."""
        self.seconds[name] -= seconds
        self.seconds[part] = seconds
        if self.metrics:
            self.metrics.phase_done(name, self.seconds[name])
            self.metrics.phase_done(part, seconds)
        log.info("[%s] of which %.2f s were [%s]", name, seconds, part)


def load_inputs(cfg: JobConfig, device: torch.device):
    """The load phase: model config and tokenizer, then the data (validated before any weight loads),
    then the weights; returns (dataset, model, selected modules, unprojected module name, model name)."""
    source = open_model(cfg.model)
    ds = configured_dataset(cfg, source)
    model = load_model(cfg.model, source, device)
    selected = select_modules(model, cfg.modules)
    unprojected_name = choose_unprojected(cfg.diagnostics.unprojected_module, [n for n, _ in selected])
    log.info("model %s: %d modules selected; data: %d prompts, %d responses (%d accepted)",
             source.name, len(selected), len(ds.prompt_ids), ds.n, sum(r.accepted for r in ds.responses))
    return ds, model, selected, unprojected_name, source.name


def capture_inputs(cfg: JobConfig, ds: Dataset, model, selected, unprojected_name, device,
                   metrics: JobMetrics | None = None):
    """The capture phase (one process): factors of every module, and the layout of responses and tokens."""
    cap = _capture(cfg, ds, model, selected, unprojected_name, device, metrics)
    arrays = ds.arrays
    return cap, make_layout(cap, arrays["prompt_index"], arrays["accepted"], arrays["advantage"])


def _capture(cfg, ds, model, selected, unprojected_name, device, metrics):
    bar = None

    def progress(k: int, n: int, responses: int, tokens: int) -> None:
        nonlocal bar
        bar = bar or Progress("capture", n, "micro-batch")
        bar.step(k, f"{tokens} tokens")
        if metrics:
            metrics.batch_done(responses, tokens)

    return capture(model, selected, ds, cfg, device, unprojected_name, progress=progress)


@dataclass
class Totals:
    """The reduce stage's output: every module's contribution summed in module order (rank 0)."""

    raw: np.ndarray
    hinv: np.ndarray
    scores: np.ndarray
    records: list[dict]
    fidelity: dict | None
    curvature_similarity: dict[str, list[dict]]


def run_job(cfg: JobConfig, write: bool = True, metrics: JobMetrics | None = None,
            comm: Comm | None = None, fresh: bool = False) -> RunResult:
    """The whole job, stage by stage. With several ranks every rank calls it; rank 0 returns the results and
    writes them, the others return ``results=None``.

    load → capture → exchange → curvature_solve (each module's contribution saved as it is done) → reduce
    → statistics/influence/diagnostics → validation → write. A run that writes its output keeps a checkpoint
    (see checkpoint.py): repeating an interrupted run's command skips the modules it had finished.
    """
    t_start = time.perf_counter()
    phases = _Phases(metrics)
    comm = comm or init_comm(cfg.compute.device, cfg.compute.timeout_seconds)
    device = comm.device
    out_dir = check_target(cfg.output.dir) if write and comm.is_root else None
    if write and comm.is_root:
        check_checkpoint_dir(cfg)  # before any weight loads
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with phases("load"):
        ds, model, selected, unprojected_name, model_name = load_inputs(cfg, device)
        if comm.is_root:
            # Times need this CPU's rates, a second's probe the run does not need: on a CPU the line gives flops.
            log.info("%s", make_plan(cfg, workload_of(cfg, model_name, model.config, ds, model),
                                     device_profile(device, measure=False), comm.world).summary())
        # Hashing the weight files reads them whole: rank 0 alone does it, and open_store shares the result.
        fp = fingerprint(cfg, ds) if comm.is_root else None
        store = open_store(cfg, fp, len(selected), fresh, write, comm)
        fp = store.fingerprint if write else fp
    names = [name for name, _ in selected]
    # Handed over, not passed: _run_stages drops the model (and the modules that reference its weights) once the
    # capture is done, and no frame of this function may keep them alive through the curvature stage.
    weights = {"model": model, "selected": selected}
    del model, selected
    try:
        return _run_stages(cfg, write, metrics, comm, phases, t_start, out_dir, ds, weights, names,
                           unprojected_name, model_name, fp, store)
    except Stopped as stop:
        stop.note = store.resume_note(len(names))
        raise


def _run_stages(cfg, write, metrics, comm, phases, t_start, out_dir, ds, weights, names, unprojected_name,
                model_name, fp, store) -> RunResult:
    device, n_modules = comm.device, len(names)
    remaining = [i for i in range(n_modules) if i not in store.done]
    if store.done and comm.is_root:
        log.info("resuming: %d of %d modules done (from %s); computing the other %d", len(store.done), n_modules,
                 store.path, len(remaining))
    unprojected_left = unprojected_name if any(names[i] == unprojected_name for i in remaining) else None
    with phases("capture"):
        selected = weights.pop("selected")
        local = _capture(cfg, local_shard(ds, comm), weights.pop("model"), [selected[i] for i in remaining],
                         unprojected_left, device, metrics)
        del selected  # the model's weights are released here: the factors are all the later stages need
    sim_layers = similarity_layers(cfg, [layer_index(name) for name in names])
    with phases("exchange"):
        cap, layout, owned = exchange_stage(cfg, ds, local, remaining, sim_layers, comm)
    with phases("curvature_solve"):
        diagnostic_seconds = solve_stage(owned, layout, ds.arrays["prompt_index"], sim_layers, cfg, store,
                                         metrics, n_modules)
    phases.book_apart("curvature_solve", "diagnostics", diagnostic_seconds)
    with phases("reduce"):
        peak_gpu = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else 0
        totals, gathered = reduce_stage(store, n_modules, int(layout.token_offsets[-1]), ds.arrays, comm, {
            "peak_gpu": peak_gpu, "peak_host": peak_rss_bytes(), "phase_seconds": dict(phases.seconds)})
    if not comm.is_root:
        return RunResult(results=None, raw=None, hinv=None, rows={}, phase_seconds=phases.seconds)
    with phases("statistics"):
        results, rows = assemble_results(cfg, ds, cap, layout, totals, model_name, fp, device, comm.world)
    results["checkpoint"] = {"dir": str(store.path) if store.path else None,
                             "kept": bool(store.path) and cfg.output.keep_checkpoint,
                             "resumed_modules": len(store.done), "computed_modules": n_modules - len(store.done)}
    results["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    # Measured before writing: the write phase is in the log but not in results.json.
    results["performance"] = {
        "wall_seconds": time.perf_counter() - t_start,
        "phase_seconds": dict(phases.seconds),
        # This attempt's modules only (summed over ranks' work), like the wall time and the phases: a resumed
        # module's seconds belong to the attempt that computed it.
        "hessian_solve_seconds": sum(m["solve_seconds"] for m in totals.records if not m["resumed"]),
        # The diagnostics computed beside the solves (unprojected comparison, curvature similarity), booked as
        # their own phase (phase_seconds["diagnostics"]) so that the solves' time is not misread.
        "diagnostics_seconds": sum(m["diagnostic_seconds"] for m in totals.records if not m["resumed"]),
        "peak_gpu_mem_bytes": max(g["peak_gpu"] for g in gathered),  # the largest rank's peak
        "peak_host_mem_bytes": max(g["peak_host"] for g in gathered),
        # Each rank's phases up to the reduce (phase_seconds above are rank 0's, which writes the result).
        "rank_phase_seconds": [g["phase_seconds"] for g in gathered],
    }
    typed = Results.model_validate(json_safe(results))  # the contract, checked before anything is written
    results = typed.as_dict()
    if write:
        arrays = ds.arrays
        similarity = {"raw": totals.raw, "hinv": totals.hinv, "prompt_index": arrays["prompt_index"],
                      "accepted": arrays["accepted"], "reward": arrays["reward"], "advantage": arrays["advantage"],
                      "log_prob": cap.log_prob}
        tokens = _token_strings(ds)
        with phases("report"):
            html = render_html(results, similarity, rows, tokens).encode()  # before the write: it takes a while
        with phases("write"), committing():
            write_output_dir(out_dir, {
                "results.json": (typed.model_dump_json(by_alias=True, indent=2) + "\n").encode(),
                "similarity.npz": npz_bytes(similarity),
                "influence_rows.npz": npz_bytes(rows),
                "influence_rows.parquet": parquet_bytes(influence_rows_table(rows, tokens)),
                "report.md": render_report(results).encode(),
                "report.html": html,
            })
        if not cfg.output.keep_checkpoint:
            store.remove()
    return RunResult(results=results, raw=totals.raw, hinv=totals.hinv, rows=rows, phase_seconds=phases.seconds)


def open_store(cfg: JobConfig, fp: dict | None, n_modules: int, fresh: bool, write: bool,
               comm: Comm) -> ContributionStore:
    """Where module contributions go: the run's checkpoint directory when it writes an output (rank 0 checks
    it and tells the other ranks its fingerprint and which modules are done), else memory."""
    if not write:
        return MemoryStore()
    ckpt = prepare(cfg, fp, n_modules, fresh) if comm.is_root else None
    shared = comm.all_gather_object({"done": sorted(ckpt.done), "fingerprint": fp} if ckpt else None,
                                    "share the checkpoint's fingerprint and finished modules")[0]
    if ckpt is None:
        ckpt = Checkpoint(checkpoint_dir(cfg).resolve(), shared["fingerprint"], settings=config_part(cfg))
        ckpt.done = {i: ckpt.file(i) for i in shared["done"]}
    return ckpt


def exchange_stage(cfg: JobConfig, ds: Dataset, local, remaining: list[int], sim_layers: set, comm: Comm):
    """Every rank's per-response metadata to every rank, and each remaining module's factors to its owner
    (owners balance the estimated seconds of each module's solves and of the diagnostics run beside them). Returns
    the merged metadata, the layout, and this rank's modules as (module index, factors, exact gradients of the
    comparison module or None)."""
    arrays = ds.arrays
    cap, n_resp, n_rows = merge_metadata(local, comm)
    layout = make_layout(cap, arrays["prompt_index"], arrays["accepted"], arrays["advantage"])
    if comm.world == 1:  # one owner: nothing to balance, no rates to measure
        owners = [0] * len(local.modules)
    else:  # rank 0 assigns for all ranks (a CPU's rates are measured, so they differ between ranks)
        owners = None
        if comm.is_root:
            costs = module_costs(cfg, local.modules, local.unprojected_name, cap.row_offsets, layout.prompt_bounds,
                                 sim_layers, device_profile(comm.device))
            owners = assign_modules(costs, comm.world)
        owners = comm.all_gather_object(owners, "share the modules' owners")[0]
    owned = exchange_modules(local, owners, n_resp, n_rows, comm)
    return cap, layout, [(remaining[j], mf, exact) for j, mf, exact in owned]


def solve_stage(owned, layout, prompt_index: np.ndarray, sim_layers: set, cfg: JobConfig, store: ContributionStore,
                metrics: JobMetrics | None, n_modules: int) -> float:
    """Curvature + solve of this rank's modules, one at a time, with the diagnostics that need a module's
    factors; each contribution is saved as soon as it is done (a stop loses at most the module in progress).
    Returns the seconds the diagnostics took."""
    bar = Progress("curvature_solve", len(owned), "module")
    diagnostic_total = 0.0
    for k, (i, mf, exact) in enumerate(owned):
        res = process_module(mf, layout, cfg)
        fidelity = curv = None
        t_diag = time.perf_counter()
        if exact is not None:
            fidelity = unprojected_comparison(
                mf.name, exact, mf.G, mf.dims, prompt_index, layout.accepted,
                cfg.validation.fidelity_sigma, cfg.projection.kind,
            )
        if runs_similarity(cfg, mf.layer, sim_layers, len(layout.prompt_bounds)):
            curv = module_curvature_similarity(mf, layout, cfg)
        diag_seconds = time.perf_counter() - t_diag
        diagnostic_total += diag_seconds
        store.save(ModuleContribution(
            index=i, record=_module_record(mf, res, diag_seconds), raw=res.raw.cpu().numpy(),
            hinv=res.hinv.cpu().numpy(),
            scores=None if res.scores is None else res.scores.cpu().numpy(), fidelity=fidelity,
            curvature_similarity=curv,
        ))
        mf.U = mf.V = None  # this module's per-position factors are no longer needed
        bar.step(k + 1, f"{mf.name} D={mf.dims.D} {res.route} {res.seconds:.3f} s"
                 + (f" + diagnostics {diag_seconds:.3f} s" if fidelity or curv else ""))
        if metrics:
            metrics.module_done(mf.kind, res.route, res.seconds, k + 1, n_modules)
    return diagnostic_total


def reduce_stage(store: ContributionStore, n_modules: int, n_tokens: int, arrays: dict, comm: Comm, extras: dict):
    """Rank 0 sums every module's contribution in module order, whichever run or rank computed it, and records
    each module's part of the per-prompt mean dots (its record's ``contribution``).

    The gather is also the barrier: when rank 0 has every rank's object, every rank has saved its modules.
    Returns (totals, every rank's ``extras``) on rank 0 and (None, None) elsewhere.
    """
    gathered = comm.gather_object({**extras, "contributions": store.handover()}, "gather module results")
    if not comm.is_root:
        return None, None
    for g in gathered:
        store.take(g.pop("contributions"))
    n_responses = len(arrays["prompt_index"])
    raw = np.zeros((n_responses, n_responses))
    hinv = np.zeros_like(raw)
    scores = np.zeros(n_tokens)
    records, fidelity, curv = [], None, {}
    pairs, masks = pair_masks(arrays["prompt_index"], arrays["accepted"])
    for i in range(n_modules):
        c = store.load(i)
        raw += c.raw
        hinv += c.hinv
        if c.scores is not None:
            scores += c.scores
        records.append({**c.record, "resumed": i in store.done,
                        "contribution": {"raw": per_prompt_dot_means(c.raw, pairs, masks),
                                         "hinv": per_prompt_dot_means(c.hinv, pairs, masks)}})
        fidelity = fidelity or c.fidelity
        if c.curvature_similarity is not None:
            curv.setdefault(c.record["kind"], []).append(c.curvature_similarity)
    return Totals(raw, hinv, scores, records, fidelity, curv), gathered


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


def _token_strings(ds: Dataset) -> list[list[str]] | None:
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


def _module_record(mf: ModuleFactors, res, diagnostic_seconds: float) -> dict:
    return {
        "name": mf.name, "kind": mf.kind, "layer": mf.layer,
        "in_features": mf.dims.d_in, "out_features": mf.dims.d_out,
        "k_in": mf.dims.k_in, "k_out": mf.dims.k_out, "D": mf.dims.D,
        "hessian_peak_mb": mf.dims.hessian_peak_mb, "solver": res.route,
        "damping": res.damping, "solve_seconds": res.seconds, "diagnostic_seconds": diagnostic_seconds,
        "factorisations": res.factorisations, "failed_factorisations": res.failed,
        "gram_dtype": res.gram_dtype, "refinement_steps": res.refinements,
    }
