"""Token influence rows (docs/method.md): per response token t of a response in prompt p,

    score_t = Σ_m [ Σ_{r∈acc(p)} g_rᵀ H_p⁻¹ g_t − Σ_{r∈rej(p)} g_rᵀ H_p⁻¹ g_t ]

computed as g_tᵀ z with z = H_p⁻¹ w_p and w_p = Σ_r c_r g_r. The coefficients c_r come from the
aggregate: 'sum' (+1 accepted, −1 rejected), 'mean' (±1/count of its side), 'advantage' (the signed
group advantage A_r of every response: w_p = Σ_r A_r g_r is the policy-gradient direction GRPO would
follow, with no accepted/rejected split). With exclude_self the response's own term leaves its tokens'
w (for 'mean', its side's mean is then over the others; an emptied side contributes nothing). Prompts
whose responses are all accepted or all rejected have no contrast: their rows carry NaN and are counted
as skipped, whatever the aggregate (docs/method.md).
"""

from __future__ import annotations

import numpy as np
import torch


def contrast_coefficients(
    accepted: np.ndarray, advantage: np.ndarray, aggregate: str, exclude_self: bool
) -> np.ndarray | None:
    """(n_p × n_p) matrix: row r holds the coefficients of w used for response r's tokens; None: no contrast."""
    n = len(accepted)
    n_acc = int(accepted.sum())
    if n_acc in (0, n):
        return None
    sign = np.where(accepted, 1.0, -1.0)
    if aggregate == "sum":
        base = sign.copy()
    elif aggregate == "advantage":
        base = np.asarray(advantage, dtype=np.float64).copy()
    else:
        base = sign / np.where(accepted, n_acc, n - n_acc)
    coeff = np.tile(base, (n, 1))
    if exclude_self:
        for r in range(n):
            coeff[r, r] = 0.0
            if aggregate == "mean":
                side = accepted == accepted[r]
                others = side.sum() - 1
                coeff[r, side] = sign[r] / others if others else 0.0
                coeff[r, r] = 0.0
    return coeff


def token_scores(U: torch.Tensor, V: torch.Tensor, Z: torch.Tensor, scored: np.ndarray, layout) -> torch.Tensor:
    """score_t = g_tᵀ z_r = u_tᵀ Z_r v_t for every response token t (Z_r the k_out × k_in reshape of row r of
    ``Z``), NaN for the tokens of responses not ``scored``.

    One small product per response: a batched product over padded responses is slower on the CPU, because
    zero-filling and scattering the padded operands cost more than the loop (bench/token_scores.py). The token
    indices move to the device once per module, and a response whose token rows are consecutive (the usual
    layout) is read as a slice, without a gather.
    """
    k_out, k_in = U.shape[1], V.shape[1]
    offsets = layout.token_offsets
    rows = layout.token_rows
    starts, ends = rows[offsets[:-1].clip(max=len(rows) - 1)], rows[(offsets[1:] - 1).clip(min=0)]
    consecutive = (ends - starts).numpy() == np.diff(offsets) - 1
    rows_dev = rows.to(U.device)
    out = torch.full((len(rows),), float("nan"), dtype=torch.float64, device=U.device)
    for r in np.flatnonzero(scored):
        a, b = int(offsets[r]), int(offsets[r + 1])
        if a == b:
            continue
        if consecutive[r]:
            s = int(starts[r])
            u, v = U[s:s + b - a], V[s:s + b - a]
        else:
            u, v = U[rows_dev[a:b]], V[rows_dev[a:b]]
        out[a:b] = ((u.double() @ Z[r].reshape(k_out, k_in)) * v.double()).sum(-1)
    return out


def score_summary(rows: dict[str, np.ndarray]) -> dict | None:
    """The batch's token scores in a few numbers (results.json ``influence.scores``); None when nothing is scored."""
    scores = np.asarray(rows["scores"], dtype=float)
    ok = np.isfinite(scores)
    if not ok.any():
        return None
    flat = np.flatnonzero(ok)
    hi, lo = flat[np.argmax(scores[ok])], flat[np.argmin(scores[ok])]

    def where(k: int) -> dict:
        r = int(np.searchsorted(rows["token_offsets"], k, side="right") - 1)
        return {"response_id": str(rows["response_id"][r]), "position": int(k - rows["token_offsets"][r]),
                "score": float(scores[k])}

    sums = np.asarray(rows["score_sum"], dtype=float)
    scored = ~np.asarray(rows["skipped"], dtype=bool)
    acc = np.asarray(rows["accepted"], dtype=bool)

    def side_mean(sel) -> float | None:
        return float(sums[sel].mean()) if sel.any() else None

    values = scores[ok]
    return {"tokens": int(ok.sum()), "mean": float(values.mean()), "std": float(values.std()),
            "positive_share": float((values > 0).mean()), "max": where(hi), "min": where(lo),
            "score_sum_mean": {"accepted": side_mean(scored & acc), "rejected": side_mean(scored & ~acc)}}
