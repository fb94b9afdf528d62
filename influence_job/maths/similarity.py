"""Statistics of an N×N similarity matrix (RAW or HINV), exact over all unordered pairs i < j.

Scopes: per_prompt (same prompt), cross_prompt (different prompts), all_prompt (every pair); categories:
acc-acc, rej-rej, acc-rej. std is the population standard deviation (ddof 0). An empty cell reports
n = 0 and null statistics.
"""

from __future__ import annotations

import numpy as np

SCOPES = ("per_prompt", "cross_prompt", "all_prompt")
CATEGORIES = ("acc-acc", "rej-rej", "acc-rej")


def summary(values: np.ndarray) -> dict:
    if values.size == 0:
        return {"mean": None, "std": None, "min": None, "max": None}
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def cosine(M: np.ndarray) -> np.ndarray:
    """M_ij / √(M_ii M_jj); NaN where a diagonal entry is not positive."""
    d = np.diag(M).copy()
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.where(d > 0, 1.0 / np.sqrt(np.where(d > 0, d, 1.0)), np.nan)
    return M * scale[:, None] * scale[None, :]


def pair_masks(prompt_index: np.ndarray, accepted: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], dict]:
    """Upper-triangle indices and, per (scope, category), a boolean mask over those pairs."""
    i, j = np.triu_indices(len(prompt_index), k=1)
    same = prompt_index[i] == prompt_index[j]
    ai, aj = accepted[i], accepted[j]
    cats = {"acc-acc": ai & aj, "rej-rej": ~ai & ~aj, "acc-rej": ai != aj}
    scopes = {"per_prompt": same, "cross_prompt": ~same, "all_prompt": np.ones_like(same)}
    masks = {(s, c): scopes[s] & cats[c] for s in SCOPES for c in CATEGORIES}
    return (i, j), masks


def matrix_stats(M: np.ndarray, prompt_index: np.ndarray, accepted: np.ndarray) -> dict:
    (i, j), masks = pair_masks(prompt_index, accepted)
    dots, cos = M[i, j], cosine(M)[i, j]
    out: dict = {s: {} for s in SCOPES}
    for (s, c), mask in masks.items():
        out[s][c] = {"n": int(mask.sum()), "dot": summary(dots[mask]), "cos": summary(cos[mask])}
    diag = np.diag(M)
    out["self_dot"] = {
        name: {"n": int(sel.sum()), **summary(diag[sel])}
        for name, sel in (("acc", accepted), ("rej", ~accepted), ("all", np.ones_like(accepted)))
    }
    return out


def per_prompt_dot_means(M: np.ndarray, pairs: tuple[np.ndarray, np.ndarray], masks: dict) -> dict:
    """A module's share of the summary: its per-prompt mean dot per category and its mean self-dot. Means are
    linear, so the modules' values sum to the whole model's (what report.html's "where" section shows)."""
    i, j = pairs
    dots = M[i, j]
    out = {c: float(dots[masks[("per_prompt", c)]].mean()) if masks[("per_prompt", c)].any() else None
           for c in CATEGORIES}
    out["self"] = float(np.diag(M).mean()) if len(M) else None
    return out
