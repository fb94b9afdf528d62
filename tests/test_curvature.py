"""The token Gram built from symmetric pair products equals the plain Gram of the explicit rows vec(u_t v_tᵀ)."""

from __future__ import annotations

import pytest
import torch

from influence_job.curvature import TokenRows, token_gram_width


def explicit_gram(U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    rows = torch.stack([torch.outer(u, v).reshape(-1) for u, v in zip(U, V, strict=True)])
    return rows.T @ rows


@pytest.mark.parametrize(
    "n,k_out,k_in,chunk",
    [(37, 5, 3, 10), (37, 3, 5, 37), (20, 1, 4, 3), (20, 4, 1, 64), (1, 2, 2, 1), (50, 1, 1, 7)],
)
def test_pair_product_gram_equals_explicit_rows(n, k_out, k_in, chunk):
    gen = torch.Generator().manual_seed(n * 100 + k_out * 10 + k_in)
    U = torch.randn(n, k_out, dtype=torch.float64, generator=gen)
    V = torch.randn(n, k_in, dtype=torch.float64, generator=gen)
    expected = explicit_gram(U, V)
    got = TokenRows(U, V, chunk=chunk).gram()
    assert got.shape == (k_out * k_in, k_out * k_in)
    assert torch.allclose(got, expected, rtol=1e-13, atol=1e-13 * float(expected.abs().max()))


def test_low_precision_gram_is_accumulated_in_float64():
    gen = torch.Generator().manual_seed(1)
    U = torch.randn(300, 6, generator=gen)
    V = torch.randn(300, 4, generator=gen)
    expected = explicit_gram(U.double(), V.double())
    got = TokenRows(U, V, chunk=64, gram_dtype="float32").gram()
    assert got.dtype == torch.float64
    err = float((got - expected).norm() / expected.norm())
    assert 0 < err < 1e-6  # float32 products, float64 sums across chunks


def test_gram_width_counts_pairs():
    # Qwen2.5-1.5B MLP at factor 32: 280 × 48 outputs/inputs → D = 13,440 and D² ≈ 1.8e8 per token row.
    assert token_gram_width(280, 48) == 39_340 * 1_176
    assert token_gram_width(280, 48) < (280 * 48) ** 2 / 3.9
