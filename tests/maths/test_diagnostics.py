"""Curvature similarity across prompts against explicit per-prompt D×D curvatures."""

import numpy as np
import pytest
import torch
from conftest import exact_config
from reference import build_reference, curvature
from tolerances import MODEL_RTOL

from influence_job.inputs.config import ProjectionConfig
from influence_job.maths.diagnostics import module_curvature_similarity
from influence_job.run.pipeline import capture_inputs, load_inputs


@pytest.mark.parametrize("side", ["kernel", "gram"])
def test_curvature_similarity_matches_explicit_matrices(tiny_model_dir, tiny_data, side, monkeypatch):
    """Both ways of computing it (cross kernels between prompts, or every prompt's D×D Gram) against explicit
    matrices; the job picks the cheaper one per module (similarity_side)."""
    from influence_job.maths import diagnostics

    monkeypatch.setattr(diagnostics, "similarity_side", lambda *a: side)
    proj = {"kind": "rademacher", "factor": 4, "seed": 3}
    ref = build_reference(tiny_model_dir, tiny_data, ProjectionConfig(**proj))
    for source in ("token", "response"):
        cfg = exact_config(tiny_model_dir, tiny_data, projection=proj, curvature={"source": source})
        ds, model, selected, _, _ = load_inputs(cfg, torch.device("cpu"))
        cap, layout = capture_inputs(cfg, ds, model, selected, None, torch.device("cpu"))
        for mf in cap.modules[:3] + cap.modules[-2:]:
            got = module_curvature_similarity(mf, layout, cfg)
            Hs = [curvature(ref, mf.name, list(range(s, e)), source) for s, e in layout.prompt_bounds]
            P = len(Hs)
            frob = np.array([[float((Hs[p] * Hs[q]).sum() / (Hs[p].norm() * Hs[q].norm())) for q in range(P)]
                             for p in range(P)])
            specs = [torch.linalg.eigvalsh(H).flip(0) for H in Hs]
            specs = [s / s.norm() for s in specs]
            spec = np.array([[float(specs[p] @ specs[q]) for q in range(P)] for p in range(P)])
            # Cosines in [0, 1] from traces and kernels against explicit D×D matrices: model-level rounding.
            np.testing.assert_allclose(got["frobenius"], frob, rtol=MODEL_RTOL)
            np.testing.assert_allclose(got["spectrum"], spec, rtol=MODEL_RTOL)
            assert np.all(got["spectrum_bound"] <= 1e-12)  # whole spectra: nothing is bounded, all is exact


@pytest.mark.parametrize("side", ["kernel", "gram"])
def test_leading_eigenvalues_only_stay_within_their_stated_bound(tiny_model_dir, tiny_data, monkeypatch, side):
    """Above EXACT_SPECTRUM_MAX only the LEADING eigenvalues are computed; the spectrum cosine then carries a bound
    (Chebyshev below, Cauchy–Schwarz above, for the rest of the spectra), and the explicit cosine lies within it."""
    from influence_job.maths import diagnostics

    proj = {"kind": "rademacher", "factor": 4, "seed": 3}
    ref = build_reference(tiny_model_dir, tiny_data, ProjectionConfig(**proj))
    cfg = exact_config(tiny_model_dir, tiny_data, projection=proj, curvature={"source": "token"})
    ds, model, selected, _, _ = load_inputs(cfg, torch.device("cpu"))
    cap, layout = capture_inputs(cfg, ds, model, selected, None, torch.device("cpu"))
    monkeypatch.setattr(diagnostics, "EXACT_SPECTRUM_MAX", 0)
    monkeypatch.setattr(diagnostics, "similarity_side", lambda *a: side)
    widths: dict[int, list[float]] = {}
    for leading in (2, 4, 8):
        monkeypatch.setattr(diagnostics, "LEADING", leading)
        for mf in cap.modules[:2] + cap.modules[-2:]:
            got = module_curvature_similarity(mf, layout, cfg)
            Hs = [curvature(ref, mf.name, list(range(s, e)), "token") for s, e in layout.prompt_bounds]
            specs = [torch.linalg.eigvalsh(H).flip(0) for H in Hs]
            specs = [s / s.norm() for s in specs]
            P = len(Hs)
            spec = np.array([[float(specs[p] @ specs[q]) for q in range(P)] for p in range(P)])
            off = ~np.eye(P, dtype=bool)
            assert np.all(np.abs(got["spectrum"] - spec)[off] <= got["spectrum_bound"][off] + 1e-12)
            widths.setdefault(leading, []).append(got["spectrum_bound"][off].max())
    # A real, informative bound, which narrows as more eigenvalues are computed exactly.
    assert 0 < max(widths[2]) < 1 and sum(widths[8]) < sum(widths[4]) < sum(widths[2])
