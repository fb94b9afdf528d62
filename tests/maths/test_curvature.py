"""The token Gram built from symmetric pair products equals the plain Gram of the explicit rows vec(u_t v_tᵀ)."""

from __future__ import annotations

import pytest
import torch

from influence_job.maths.rows import TokenRows, token_gram_width


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
    """Float32 products, float64 sums across steps: on integer factors that makes the Gram exact, which no
    float32 accumulation can be.

    Entries u, v are integers 1..15, so every pair product (≤ 15⁴) and every step's float32 sum (≤ step ×
    15⁴ < 2²⁴) is an exact float32 integer, whatever the summation order; adding the steps in float64 is
    exact too (totals ≪ 2⁵³). The totals (~10⁸) exceed 2²⁴, where float32 holds only multiples of 8 or
    more: a float32 accumulator — a pure float32 Gram included — cannot return them exactly.
    """
    gen = torch.Generator().manual_seed(1)
    n, k_out, k_in, chunk = 65_536, 3, 2, 64
    U = torch.randint(1, 16, (n, k_out), generator=gen).float()
    V = torch.randint(1, 16, (n, k_in), generator=gen).float()
    rows = (U.long()[:, :, None] * V.long()[:, None, :]).reshape(n, -1)
    exact = rows.T @ rows  # int64: the Gram without any rounding
    step = chunk * k_out * k_in // (2 * (k_out * (k_out + 1) // 2 + k_in * (k_in + 1) // 2))
    assert step * 15**4 < 2**24 < int(exact.min())  # the premises above
    got = TokenRows(U, V, chunk=chunk, gram_dtype="float32").gram()
    assert got.dtype == torch.float64
    assert torch.equal(got, exact.double())
    rows32 = rows.float()
    assert not torch.equal((rows32.T @ rows32).double(), exact.double())  # float32 accumulation is not exact


def test_gram_width_counts_pairs():
    # Qwen2.5-1.5B MLP at factor 32: 280 × 48 outputs/inputs → D = 13,440 and D² ≈ 1.8e8 per token row.
    assert token_gram_width(280, 48) == 39_340 * 1_176
    assert token_gram_width(280, 48) < (280 * 48) ** 2 / 3.9


@pytest.mark.parametrize("k_out,k_in", [(7, 3), (3, 7), (5, 5)])
@pytest.mark.parametrize("m", [1, 2, 6, 9])  # below and at or above max(k_out, k_in): factors, then explicit rows
@pytest.mark.parametrize("chunk", [4, 1000])
def test_products_with_right_hand_sides_equal_explicit_rows(k_out, k_in, m, chunk):
    """R Xᵀ, Rᵀ C and RᵀR Xᵀ, whichever way TokenRows computes them, against explicit rows vec(u_t v_tᵀ)."""
    gen = torch.Generator().manual_seed(k_out * 100 + k_in * 10 + m)
    n = 23
    U = torch.randn(n, k_out, dtype=torch.float64, generator=gen)
    V = torch.randn(n, k_in, dtype=torch.float64, generator=gen)
    X = torch.randn(m, k_out * k_in, dtype=torch.float64, generator=gen)
    C = torch.randn(n, m, dtype=torch.float64, generator=gen)
    rows = TokenRows(U.float(), V.float(), chunk=chunk)  # stored as the capture stores them: float32
    R32 = torch.stack([torch.outer(u, v).reshape(-1) for u, v in zip(U.float().double(), V.float().double(),
                                                                      strict=True)])
    products = [(rows.gram_apply(X), X @ R32.T @ R32)]
    for force in (None, True, False):  # the engine's choice, then each way forced
        products += [(rows.cross(X, force), R32 @ X.T), (rows.transpose_apply(C, force), C.T @ R32)]
    for got, want in products:
        assert got.dtype == torch.float64 and got.shape == want.shape
        assert torch.allclose(got, want, rtol=1e-13, atol=1e-13 * float(want.abs().max()))
    assert (rows._factored(m) is None) == (m >= max(k_out, k_in))
