"""Results do not depend on micro-batching or prompt order, and identical runs write identical numbers."""

import numpy as np
from conftest import GROUPS, exact_config, write_jsonl
from tolerances import MODEL_RTOL, SOLVE_RTOL, rel_err

from influence_job.run.pipeline import run_job

PROJ = {"kind": "rademacher", "factor": 4}


def test_micro_batch_size_does_not_change_results(tiny_model_dir, tiny_data):
    runs = [
        run_job(exact_config(tiny_model_dir, tiny_data, projection=PROJ, compute={"micro_batch_tokens": mb}),
                write=False)
        for mb in (1, 40, 100000)
    ]
    scored = ~np.isnan(runs[0].rows["scores"])
    for other in runs[1:]:
        assert rel_err(other.raw, runs[0].raw) < MODEL_RTOL
        assert rel_err(other.hinv, runs[0].hinv) < SOLVE_RTOL
        np.testing.assert_array_equal(np.isnan(other.rows["scores"]), ~scored)
        assert rel_err(other.rows["scores"][scored], runs[0].rows["scores"][scored]) < SOLVE_RTOL


def test_prompt_order_only_permutes_results(tiny_model_dir, tiny_data, tmp_path):
    order = [2, 4, 0, 3, 1]
    shuffled = write_jsonl(tmp_path / "shuffled.jsonl", [GROUPS[i] for i in order])
    a = run_job(exact_config(tiny_model_dir, tiny_data, projection=PROJ), write=False)
    b = run_job(exact_config(tiny_model_dir, shuffled, projection=PROJ), write=False)
    ids_a = list(a.rows["response_id"])
    perm = [ids_a.index(r) for r in b.rows["response_id"]]
    assert rel_err(b.raw, a.raw[np.ix_(perm, perm)]) < MODEL_RTOL
    assert rel_err(b.hinv, a.hinv[np.ix_(perm, perm)]) < SOLVE_RTOL
    for i, j in enumerate(perm):
        sa = a.rows["scores"][a.rows["token_offsets"][j]:a.rows["token_offsets"][j + 1]]
        sb = b.rows["scores"][b.rows["token_offsets"][i]:b.rows["token_offsets"][i + 1]]
        np.testing.assert_array_equal(np.isnan(sb), np.isnan(sa))
        if not np.isnan(sa).all():
            assert rel_err(sb, sa) < SOLVE_RTOL
    for scope in ("per_prompt", "all_prompt"):
        for cat in ("acc-acc", "acc-rej"):
            assert np.isclose(a.results.similarity.hinv.scopes()[scope].cells()[cat].dot.mean,
                              b.results.similarity.hinv.scopes()[scope].cells()[cat].dot.mean, rtol=SOLVE_RTOL, atol=0)


def test_identical_runs_write_identical_numbers(tiny_model_dir, tiny_data, tmp_path):
    arrays = []
    for k in range(2):
        out = tmp_path / f"run{k}"
        run_job(exact_config(tiny_model_dir, tiny_data, out=out, projection=PROJ))
        with np.load(out / "similarity.npz") as z, np.load(out / "influence_rows.npz") as r:
            arrays.append({**{k: z[k] for k in z.files}, **{"rows." + k: r[k] for k in r.files}})
    assert arrays[0].keys() == arrays[1].keys()
    for key in arrays[0]:
        np.testing.assert_array_equal(arrays[0][key], arrays[1][key], err_msg=key)


def test_chunked_log_probs_and_entropies_equal_the_whole_log_softmax(monkeypatch):
    """capture's position-chunked log π and entropy (what keeps a 151,936-token vocabulary from materialising two
    T×V arrays) against a plain whole log_softmax, values and gradients, with chunks of 3 positions."""
    from types import SimpleNamespace

    import torch

    from influence_job.maths import capture

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 11, 50, generator=g, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, 50, (2, 11), generator=g)
    monkeypatch.setattr(capture, "SOFTMAX_CHUNK_ELEMENTS", 3 * 2 * 50)
    target, entropy = capture.token_log_probs(logits, SimpleNamespace(input_ids=ids))
    (grad,) = torch.autograd.grad(target.sum(), logits)
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    expected = logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    (expected_grad,) = torch.autograd.grad(expected.sum(), logits)
    # Two float64 evaluations of the same quantities: rounding-level agreement (tolerances.MODEL_RTOL, 100 u).
    assert rel_err(target.detach(), expected.detach()) < MODEL_RTOL
    assert rel_err(entropy, -(logp.exp() * logp).sum(-1).detach()) < MODEL_RTOL
    assert rel_err(grad, expected_grad) < MODEL_RTOL
    assert target.shape == (2, 10) and entropy.shape == (2, 10)
