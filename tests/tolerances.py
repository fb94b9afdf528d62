"""Tolerances of the exact comparisons, derived from float64's noise floor (never tuned to a machine).

Both sides of an exact comparison compute the same quantity in float64 (the Qwen2 model is patched to stay in
float64 throughout, see float64_qwen2.py) by different summation orders: one unpadded sequence at a time
against padded micro-batches, explicit D-vectors against u/v factors, D×D solves against kernel identities.
Each result then differs by a small multiple of the unit roundoff u = 2^-53 per operation level, whatever
CPU kernels PyTorch picks; we allow 100 u for a value read off the model (RAW, entropies, log-probs,
statistics), where measured differences are below 3 u.

A solve with H = H₀ + λI multiplies a relative error by at most cond(H). The automatic damping bounds it:
λ = 0.1·tr(H₀)/D ≥ 0.1·λ_max(H₀)/D, so cond(H) ≤ 1 + 10·D. The test model's largest projected dimension
is D = 384 (gate/up/down with projection none: 16 × 24), so HINV and token scores get 100 u × 3,841;
measured differences are below 1e-13.
"""

from __future__ import annotations

import numpy as np

U64 = 2.0**-53
MODEL_RTOL = 100 * U64  # ≈ 1.1e-14
TEST_MODEL_MAX_D = 384
AUTO_DAMPING_COND = 1 + 10 * TEST_MODEL_MAX_D
SOLVE_RTOL = MODEL_RTOL * AUTO_DAMPING_COND  # ≈ 4.3e-11


def solve_rtol(cond: float) -> float:
    """The tolerance of a solve whose condition number is bounded by ``cond`` (e.g. a fixed damping)."""
    return MODEL_RTOL * cond


def rel_err(a, b) -> float:
    """Norm-wise relative difference ‖a − b‖ / ‖b‖ (entry-wise ratios blow up on entries that cancel)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))
