"""Validation checks recorded in results.json and report.md; the run exits non-zero when one fails."""

from __future__ import annotations

import numpy as np


def _check(name: str, passed: bool, detail: str) -> dict:
    return {"name": name, "passed": bool(passed), "detail": detail}


def nonfinite_count(*arrays: np.ndarray) -> int:
    return int(sum(np.size(a) - np.isfinite(a).sum() for a in arrays))


def psd_check(name: str, M: np.ndarray, tol: float = 1e-9) -> dict:
    """A Gram-type matrix must have no eigenvalue below −tol·(largest |eigenvalue|)."""
    if not np.isfinite(M).all():
        return _check(name, False, "matrix has non-finite entries")
    eig = np.linalg.eigvalsh((M + M.T) / 2)
    scale = max(abs(eig).max(), 1e-300)
    return _check(name, eig.min() >= -tol * scale, f"min eigenvalue {eig.min():.3e}, max |eigenvalue| {scale:.3e}")


def run_checks(
    n_responses: int,
    rows_emitted: int,
    raw: np.ndarray,
    hinv: np.ndarray,
    scores: np.ndarray,
    entropy: np.ndarray,
    skipped_token_mask: np.ndarray,
    failed_factorisations: list[str],
    n_factorisations: int,
    fidelity: dict | None,
    scope: str,
) -> dict:
    scored = scores[~skipped_token_mask]
    nan_count = nonfinite_count(raw, hinv, scored, entropy)
    checks = [
        _check("rows_emitted", rows_emitted == n_responses, f"{rows_emitted} rows for {n_responses} responses"),
        _check(
            "finite_outputs",
            nan_count == 0,
            f"{nan_count} non-finite values in RAW, HINV, entropies and the scores of prompts with contrast",
        ),
        _check(
            "factorisations",
            not failed_factorisations,
            f"{n_factorisations - len(failed_factorisations)}/{n_factorisations} succeeded"
            + (f"; failed: {', '.join(failed_factorisations[:5])}" if failed_factorisations else ""),
        ),
        psd_check("raw_psd", raw),
    ]
    if scope == "global":  # the per-prompt symmetrised HINV need not be PSD
        checks.append(psd_check("hinv_psd", hinv))
    if fidelity is not None:
        f = fidelity["fidelity"]
        err = f["self_dot_relative_error"]
        checks.append(
            _check(
                "projection_fidelity",
                f["passed"],
                f"{fidelity['module']}: projected self-dot mean differs by "
                f"{'n/a' if err is None else f'{err:+.2%}'} from the exact one (tolerance ±{f['tolerance']:.2%}: "
                f"{f['sigma']:g} × the sketch's relative standard deviation bound {f['relative_std_bound']:.2%})",
            )
        )
    return {
        "rows_emitted": rows_emitted,
        "nan_count": nan_count,
        "checks": checks,
        "passed": all(c["passed"] for c in checks),
    }
