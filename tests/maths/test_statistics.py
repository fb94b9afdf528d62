"""similarity.matrix_stats against a plain double loop over pairs."""

import numpy as np
import pytest
from reference import pair_loop_stats

from influence_job.maths.similarity import CATEGORIES, SCOPES, matrix_stats


@pytest.mark.parametrize("seed", [0, 1])
def test_stats_equal_direct_pair_loop(seed):
    rng = np.random.default_rng(seed)
    N = 23
    X = rng.normal(size=(N, 7))
    M = X @ X.T
    prompt_index = np.sort(rng.integers(0, 5, size=N))
    accepted = rng.random(N) < 0.5
    stats = matrix_stats(M, prompt_index, accepted)
    cells = pair_loop_stats(M, prompt_index, accepted)
    for s in SCOPES:
        for c in CATEGORIES:
            vals = cells.get((s, c), [])
            cell = stats[s][c]
            assert cell["n"] == len(vals)
            if not vals:
                assert cell["dot"]["mean"] is None
                continue
            dots = np.array([v[0] for v in vals])
            coss = np.array([v[1] for v in vals])
            for key, fn in (("mean", np.mean), ("std", np.std), ("min", np.min), ("max", np.max)):
                assert cell["dot"][key] == pytest.approx(fn(dots), rel=1e-12, abs=1e-12)
                assert cell["cos"][key] == pytest.approx(fn(coss), rel=1e-12, abs=1e-12)
    diag = np.diag(M)
    for name, sel in (("acc", accepted), ("rej", ~accepted), ("all", np.ones(N, bool))):
        assert stats["self_dot"][name]["n"] == sel.sum()
        assert stats["self_dot"][name]["mean"] == pytest.approx(diag[sel].mean())
        assert stats["self_dot"][name]["max"] == pytest.approx(diag[sel].max())


def test_empty_category_is_null_not_nan():
    M = np.eye(3) + 0.5
    stats = matrix_stats(M, np.array([0, 0, 1]), np.array([True, True, True]))
    assert stats["per_prompt"]["rej-rej"]["n"] == 0
    assert stats["per_prompt"]["rej-rej"]["cos"]["mean"] is None
    assert stats["per_prompt"]["acc-acc"]["n"] == 1
