"""Two-sided random projections of per-module gradients (docs/method.md).

P_in (k_in × d_in) and P_out (k_out × d_out) have independent ±1/√k entries, drawn from a generator
seeded by the global seed and the module's qualified name, so every rank and every run draws the
same matrices for a module without communicating them.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch

from influence_job.inputs.config import ProjectionConfig


@dataclass(frozen=True)
class Dims:
    d_in: int
    d_out: int
    k_in: int
    k_out: int

    @property
    def D(self) -> int:
        return self.k_in * self.k_out

    @property
    def hessian_peak_mb(self) -> int:
        """Size of the dense D×D float64 curvature, in MiB (what a dense solve must hold)."""
        return round(self.D * self.D * 8 / 2**20)


def projected_dims(d_in: int, d_out: int, cfg: ProjectionConfig) -> Dims:
    if cfg.kind == "none":
        return Dims(d_in, d_out, d_in, d_out)
    k_in, k_out = max(1, d_in // cfg.factor), max(1, d_out // cfg.factor)
    cap = cfg.max_hessian_dim
    if cap != -1 and k_in * k_out > cap:
        scale = math.sqrt(cap / (k_in * k_out))
        k_in, k_out = max(1, int(k_in * scale)), max(1, int(k_out * scale))
        while k_in * k_out > cap:  # rounding can leave the product just above the cap
            if k_in >= k_out:
                k_in -= 1
            else:
                k_out -= 1
    return Dims(d_in, d_out, k_in, k_out)


def _generator(seed: int, name: str, side: str) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}:{name}:{side}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def rademacher(k: int, d: int, seed: int, name: str, side: str) -> torch.Tensor:
    """A k×d matrix with independent entries ±1/√k (float64, CPU): deterministic in (seed, name, side)."""
    signs = torch.randint(0, 2, (k, d), generator=_generator(seed, name, side), dtype=torch.int8)
    return (signs.to(torch.float64) * 2 - 1) / math.sqrt(k)


def projection_matrices(name: str, dims: Dims, cfg: ProjectionConfig) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(P_in, P_out) for a module, or None for the identity (projection kind 'none')."""
    if cfg.kind == "none":
        return None
    return (
        rademacher(dims.k_in, dims.d_in, cfg.seed, name, "in"),
        rademacher(dims.k_out, dims.d_out, cfg.seed, name, "out"),
    )
