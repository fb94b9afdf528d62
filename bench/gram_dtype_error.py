"""What a cheaper dense token Gram costs in error: float32 and TF32 products (float64 accumulation across chunks,
as TokenRows.gram does) against float64 products, at a real module shape, carried through to the results.

For each compute.gram_dtype: the Gram H₀ = Σ_t g_t g_tᵀ, its error ‖ΔH₀‖_F/‖H₀‖_F, the bound ‖ΔH₀‖_F/λ on the
relative error of H⁻¹ (with H = H₀ + λI: H̃⁻¹ − H⁻¹ = −H̃⁻¹ ΔH₀ H⁻¹, so ‖H̃⁻¹ − H⁻¹‖ ≤ ‖ΔH₀‖‖H⁻¹‖‖H̃⁻¹‖ and
‖H⁻¹‖ ≤ 1/λ; the automatic damping λ = 0.1·tr(H₀)/D is what keeps this bound finite: cond(H) ≤ 1 + 10·D), and
the measured relative errors of what the job reports from it — the HINV block G H⁻¹ Gᵀ of N response sums and the
solves H⁻¹ gᵣ behind the token scores — from the cheaper factor alone and after the job's float64 iterative
refinement (with the refinement's time and steps for each). The checks: refined HINV and solves within 1e-10 of
float64's.

TF32 on a CPU is emulated: the pair products are rounded to TF32's 10-bit mantissa (round to nearest) before an
float32 GEMM, as NVIDIA's tensor cores round their inputs and accumulate in float32; on a GPU it is the real
thing (--device cuda). Factors: Gaussian u, v with column scales decaying as 1/(i+1), so that H₀'s spectrum
decays as real curvatures' do.

Default shape: one Qwen2.5-1.5B MLP module at factor 32 (k_out 280, k_in 48, D 13,440), 16,384 token rows;
--small: k_out 140, k_in 24 (D 3,360), 4,096 rows. Run: python bench/gram_dtype_error.py [--small] [--device cuda]
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
from common import Agreement

from influence_job.maths import rows as curvature_rows
from influence_job.maths.curvature import damping_value, factor
from influence_job.maths.rows import TokenRows


def round_tf32_(x: torch.Tensor) -> torch.Tensor:
    """Round float32 values in place to TF32 (10 explicit mantissa bits): to nearest, ties away from zero, as the
    PTX conversion cvt.rna.tf32.f32 does (adding half an ulp to the magnitude bits and truncating)."""
    bits = x.view(torch.int32)
    bits.add_(0x1000).bitwise_and_(~0x1FFF)
    return x


def emulated_tf32():
    """TokenRows.gram with every pair product rounded to TF32 (CPU emulation of the tensor cores' input)."""
    real = curvature_rows.pair_rows

    def rounded(*args):
        return round_tf32_(real(*args))

    class Patch:
        def __enter__(self):
            curvature_rows.pair_rows = rounded

        def __exit__(self, *exc):
            curvature_rows.pair_rows = real

    return Patch()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--responses", type=int, default=96)
    Agreement.add_argument(ap)
    args = ap.parse_args()
    agreement = Agreement(args.bound_scale)
    device = torch.device(args.device)
    k_out, k_in, n = (140, 24, 4096) if args.small else (280, 48, 16384)
    gen = torch.Generator().manual_seed(0)

    def factors(k: int) -> torch.Tensor:
        scale = 1.0 / torch.arange(1, k + 1, dtype=torch.float64)
        return (torch.randn(n, k, generator=gen, dtype=torch.float64) * scale).float().to(device)

    U, V = factors(k_out), factors(k_in)
    D = k_out * k_in
    print(f"device {device}, k_out {k_out}, k_in {k_in} (D {D:,}), {n:,} token rows, {args.responses} responses; "
          f"torch {torch.__version__}")
    # N response sums of consecutive token rows, as the job's G = S G_tok.
    bounds = torch.linspace(0, n, args.responses + 1).long()
    reference = TokenRows(U, V, gram_dtype="float64")
    S = torch.zeros(n, args.responses, dtype=torch.float64, device=device)
    for r, (a, b) in enumerate(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)):
        S[a:b, r] = 1.0
    G = reference.transpose_apply(S)  # (N × D): row r is Σ_{t ∈ r} g_t
    lam = damping_value(reference, "auto")
    results = {}
    for dtype in ("float64", "float32", "tf32"):
        rows = TokenRows(U, V, gram_dtype=dtype)
        t0 = time.perf_counter()
        with emulated_tf32() if dtype == "tf32" and device.type == "cpu" else contextlib.nullcontext():
            solver = factor(rows, "auto", "dense", n_rhs=args.responses)
        seconds = time.perf_counter() - t0
        # The cheaper factor alone (what the job did before refinement), then the job's refined solves.
        W = torch.linalg.solve_triangular(solver.L, G.T, upper=False)
        plain = (W.T @ W, torch.cholesky_solve(G.T, solver.L).T)
        del W
        timed = []
        for use in ("quad", "solve"):
            t0, before = time.perf_counter(), solver.refinements
            timed.append(getattr(solver, use)(G))
            if device.type == "cuda":
                torch.cuda.synchronize()
            timed.append((time.perf_counter() - t0, solver.refinements - before))
        refined, refine_seconds = (timed[0], timed[2]), (timed[1], timed[3])
        with emulated_tf32() if dtype == "tf32" and device.type == "cpu" else contextlib.nullcontext():
            H0 = rows.gram()
        results[dtype] = (H0, plain, refined, seconds, refine_seconds)
        del solver
    H0, (quad, solve), _, _, _ = results["float64"]
    print("| products | Gram + factor | ‖ΔH₀‖_F/‖H₀‖_F | bound ‖ΔH₀‖_F/λ | HINV, factor only | solves, factor only | "
          "HINV refined | solves refined | HINV quad: time (steps) | solves: time (steps) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for dtype, (h, (q, z), (rq, rz), seconds, ((qs, qn), (ss, sn))) in results.items():
        print(f"| {dtype}{' (emulated)' if dtype == 'tf32' and device.type == 'cpu' else ''} | {seconds:.2f} s | "
              f"{rel(h, H0):.2e} | {float((h - H0).norm()) / lam:.2e} | {rel(q, quad):.2e} | {rel(z, solve):.2e} | "
              f"{rel(rq, quad):.2e} | {rel(rz, solve):.2e} | {qs:.2f} s ({qn}) | {ss:.2f} s ({sn}) |")
    for dtype, (_, _, (rq, rz), _, _) in results.items():
        if dtype != "float64":
            agreement.check(f"{dtype} refined solves vs float64 (relative)", rel(rz, solve), 1e-10)
            agreement.check(f"{dtype} refined HINV vs float64 (relative)", rel(rq, quad), 1e-10)
    # The reference itself: the float64 pair-product Gram against the Gram of explicit rows, chunk by chunk.
    explicit = torch.zeros(D, D, dtype=torch.float64, device=device)
    for a in range(0, n, 2048):
        X = reference.explicit(a, min(a + 2048, n))
        explicit.addmm_(X.T, X)
    agreement.check("float64 pair-product Gram vs explicit rows (relative)", rel(H0, explicit), 1e-13)
    # TF32 keeps 10 mantissa bits (ulp 2^-10 at 1): a tie rounds away from zero, less than half an ulp goes down.
    x = torch.tensor([1.0 + 2**-11, 1.0 + 2**-10 + 2**-12, -(1.0 + 2**-11), 3.0], device=device)
    want = torch.tensor([1.0 + 2**-10, 1.0 + 2**-10, -(1.0 + 2**-10), 3.0], device=device)
    agreement.check("TF32 rounding of known values", float((round_tf32_(x.clone()) - want).abs().max()), 1e-30)
    agreement.finish()
    print(f"λ = {lam:.4g} (auto: 0.1 × mean eigenvalue); cond(H) ≤ 1 + 10·D = {1 + 10 * D:,}")


if __name__ == "__main__":
    main()
