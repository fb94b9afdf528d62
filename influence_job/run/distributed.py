"""Running across ranks (torchrun): prompts sharded whole, module curvature work owned by one rank each.

The plan per run: every rank captures the factors of its own prompts (contiguous blocks of prompts,
balanced by token count, so concatenating ranks in order gives input order); the small per-response
metadata is all-gathered; each module's G, U, V are gathered to the rank that owns the module (owners chosen by
estimated seconds, planning.estimate.module_costs, largest first, onto the least-loaded rank); owners run the
single-process engine on their modules in parallel; the N×N matrices and the token scores are summed onto rank 0,
which writes the outputs. ``Comm`` is the identity for one process, so there is a single code path.

Every collective runs under the process group's timeout; a failure or a dead peer becomes a
``DistributedError`` naming the rank and the step, never a hang.
"""

from __future__ import annotations

import datetime
import os
from contextlib import contextmanager

import numpy as np
import torch
import torch.distributed as dist

from influence_job.base.errors import DistributedError, InputError
from influence_job.inputs.data import Dataset
from influence_job.maths.capture import Capture, ModuleFactors
from influence_job.planning.assignment import shard_prompts


class Comm:
    """Collectives over the default process group; with one process every operation is the identity."""

    def __init__(self, rank: int = 0, world: int = 1, device: torch.device | None = None):
        self.rank, self.world, self.device = rank, world, device or torch.device("cpu")

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    @contextmanager
    def step(self, what: str):
        """Names the step in the error when a collective fails (dead peer, timeout, backend error)."""
        try:
            yield
        except (RuntimeError, dist.DistBackendError, ConnectionError) as exc:
            raise DistributedError(
                f"rank {self.rank} of {self.world}: the collective step '{what}' failed ({str(exc).strip()[:300]}). "
                "Another rank stopped or did not answer within compute.timeout_seconds; see that rank's error."
            ) from None

    def all_gather_object(self, obj, what: str) -> list:
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        with self.step(what):
            dist.all_gather_object(out, obj)
        return out

    def gather_object(self, obj, what: str) -> list | None:
        if self.world == 1:
            return [obj]
        out = [None] * self.world if self.is_root else None
        with self.step(what):
            dist.gather_object(obj, out, dst=0)
        return out

    def gather_rows(self, tensor: torch.Tensor, sizes: list[int], dst: int, what: str) -> torch.Tensor | None:
        """Concatenation, in rank order, of every rank's rows, on ``dst`` (None elsewhere).

        ``sizes`` are the row counts of all ranks (known everywhere from the metadata); tensors are padded
        to the largest so that the backend's fixed-shape gather applies.
        """
        if self.world == 1:
            return tensor
        width = max(sizes)
        padded = torch.zeros((width, *tensor.shape[1:]), dtype=tensor.dtype, device=self.device)
        padded[: tensor.shape[0]] = tensor.to(self.device)
        parts = [torch.empty_like(padded) for _ in range(self.world)] if self.rank == dst else None
        with self.step(what):
            dist.gather(padded, parts, dst=dst)
        if self.rank != dst:
            return None
        return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def init_comm(device_setting: str, timeout_seconds: float) -> Comm:
    """One Comm per process: from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK), else single."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_setting == "cuda" and not torch.cuda.is_available():
        raise InputError("compute.device is cuda but no CUDA device is visible. Use compute.device: auto or cpu.")
    use_cuda = device_setting == "cuda" or (device_setting == "auto" and torch.cuda.is_available())
    device = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1:
        backend = "nccl" if use_cuda else "gloo"
        try:
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_seconds),
                                    **({"device_id": device} if use_cuda else {}))
        except (RuntimeError, ValueError, dist.DistStoreError) as exc:
            raise DistributedError(
                f"rank {rank} of {world}: the process group did not form ({str(exc).strip()[:300]}). Start all "
                "ranks with torchrun, and check MASTER_ADDR/MASTER_PORT and compute.timeout_seconds."
            ) from None
    return Comm(rank, world, device)


def local_shard(ds: Dataset, comm: Comm) -> Dataset:
    """This rank's whole prompts (contiguous, balanced by tokens); prompt indices stay global."""
    tokens = np.zeros(len(ds.prompt_ids), dtype=np.int64)
    for r in ds.responses:
        tokens[r.prompt_index] += r.length
    start, stop = shard_prompts(tokens.tolist(), comm.world)[comm.rank]
    return Dataset(ds.prompt_ids, [r for r in ds.responses if start <= r.prompt_index < stop])


def merge_metadata(local: Capture, comm: Comm) -> tuple[Capture, list[int], list[int]]:
    """Every rank's per-response metadata, concatenated in rank (= input) order, on every rank; with the
    response and token-row counts of each rank."""
    meta = comm.all_gather_object({
        "rows_per_response": np.diff(local.row_offsets),
        "row_token": local.row_token.cpu().numpy(),
        "entropy": local.entropy,
        "log_prob": local.log_prob,
        "n_positions": local.n_positions,
    }, "exchange per-response metadata")
    per_response = np.concatenate([m["rows_per_response"] for m in meta])
    merged = Capture(
        modules=[],
        row_offsets=np.concatenate([[0], np.cumsum(per_response)]),
        row_token=torch.as_tensor(np.concatenate([m["row_token"] for m in meta])),
        entropy=[e for m in meta for e in m["entropy"]],
        log_prob=np.concatenate([m["log_prob"] for m in meta]),
        n_positions=sum(m["n_positions"] for m in meta),
        unprojected_name=local.unprojected_name,
    )
    return merged, [len(m["log_prob"]) for m in meta], [int(m["rows_per_response"].sum()) for m in meta]


def exchange_modules(local: Capture, owners: list[int], n_resp: list[int], n_rows: list[int], comm: Comm):
    """Each module's G, U, V (and the exact gradients of the comparison module) onto its owner rank."""
    owned: list[tuple[int, ModuleFactors, torch.Tensor | None]] = []
    for i, mf in enumerate(local.modules):
        what = f"gather module {mf.name}"
        G = comm.gather_rows(mf.G, n_resp, owners[i], what)
        U = comm.gather_rows(mf.U, n_rows, owners[i], what)
        V = comm.gather_rows(mf.V, n_rows, owners[i], what)
        exact = None
        if mf.name == local.unprojected_name:
            exact = comm.gather_rows(local.unprojected, n_resp, owners[i], what)
        if comm.rank == owners[i]:
            owned.append((i, ModuleFactors(mf.name, mf.kind, mf.layer, mf.dims, G, U, V), exact))
        local.modules[i] = None  # this rank's share has been sent
    return owned
