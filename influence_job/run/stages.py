"""The stages between the capture and the statistics: factors to the modules' owners (exchange), each owned
module's curvature, solves and diagnostics (curvature_solve, saved to the store as each is done), and every
module's contribution summed on rank 0 (reduce)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from influence_job.inputs.config import JobConfig
from influence_job.inputs.data import Dataset
from influence_job.maths.capture import ModuleFactors
from influence_job.maths.diagnostics import module_curvature_similarity, unprojected_comparison
from influence_job.maths.engine import make_layout, process_module
from influence_job.maths.similarity import pair_masks, per_prompt_dot_means
from influence_job.monitoring.metrics import JobMetrics
from influence_job.outputs.results import Contribution, ModuleRecord, Shares
from influence_job.planning.assignment import assign_modules
from influence_job.planning.estimate import module_costs, runs_similarity
from influence_job.planning.profiles import device_profile
from influence_job.run.checkpoint import ContributionStore, ModuleContribution
from influence_job.run.distributed import Comm, exchange_modules, merge_metadata
from influence_job.run.progress import Progress


@dataclass
class Totals:
    """The reduce stage's output: every module's contribution summed in module order (rank 0)."""

    raw: np.ndarray
    hinv: np.ndarray
    scores: np.ndarray
    records: list[ModuleRecord]
    fidelity: dict | None
    curvature_similarity: dict[str, list[dict]]


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
            index=i, record=module_record(mf, res, diag_seconds), raw=res.raw.cpu().numpy(),
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
        contribution = Contribution(raw=Shares.model_validate(per_prompt_dot_means(c.raw, pairs, masks)),
                                    hinv=Shares.model_validate(per_prompt_dot_means(c.hinv, pairs, masks)))
        records.append(c.record.model_copy(update={"resumed": i in store.done, "contribution": contribution}))
        fidelity = fidelity or c.fidelity
        if c.curvature_similarity is not None:
            curv.setdefault(c.record.kind, []).append(c.curvature_similarity)
    return Totals(raw, hinv, scores, records, fidelity, curv), gathered


def module_record(mf: ModuleFactors, res, diagnostic_seconds: float) -> ModuleRecord:
    """What results.json says of a module the run computed; whether it was resumed and its contribution are set
    when the contributions are summed (reduce_stage)."""
    return ModuleRecord(
        name=mf.name, kind=mf.kind, layer=mf.layer, in_features=mf.dims.d_in, out_features=mf.dims.d_out,
        k_in=mf.dims.k_in, k_out=mf.dims.k_out, D=mf.dims.D, hessian_peak_mb=mf.dims.hessian_peak_mb,
        solver=res.route, damping=res.damping, solve_seconds=res.seconds, diagnostic_seconds=diagnostic_seconds,
        factorisations=res.factorisations, failed_factorisations=res.failed, gram_dtype=res.gram_dtype,
        refinement_steps=res.refinements,
    )
