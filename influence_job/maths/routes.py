"""The route of one factorisation: what each exact route costs (flops by kind, peak bytes) and which to take.

The kernel route works in the n×n space of the rows, the dense route in the D×D space of the parameters
(docs/method.md). The estimates mirror the code's working sets; the engine picks by flops at equal rates, the
planner prices the same estimates with a device's rates (planning.estimate).
"""

from __future__ import annotations

from dataclasses import dataclass

from influence_job.maths.rows import CurvatureRows

# A TF32 GEMM against a float64 one on an H100/H200: the GH100's TF32 tensor-core rate is about four times its
# float64 rate (the original system's H200 measurements, bench/RESULTS.md).
TF32_SPEEDUP = 4.0


def resolve_gram_dtype(setting: str, on_gpu: bool, n: int, D: int, gram_width: int, n_rhs: int,
                       quad: bool) -> str:
    """compute.gram_dtype for one dense token factorisation (n rows, D, ``gram_width`` multiply-adds per row of the
    Gram, n_rhs right-hand sides of a quadratic form or of solves). 'auto': float64 on a CPU, where cheaper products
    save nothing (bench/RESULTS.md); on a GPU TF32 when the Gram's products it saves, 2·n·gram_width·(1 − 1/4) at
    the float64 rate, outweigh the float64 refinement steps it adds, else float64 (small modules, many right-hand
    sides)."""
    if setting != "auto":
        return setting
    if not on_gpu:
        return "float64"
    saved = 2.0 * n * gram_width * (1 - 1 / TF32_SPEEDUP)
    added = REFINE_STEPS_ESTIMATE["quad" if quad else "solve"] * (4.0 * n * n_rhs * D + 2.0 * n_rhs * D * D)
    return "tf32" if saved > added else "float64"


@dataclass(frozen=True)
class RouteEstimate:
    """What one factorisation and its solves cost by one route: flops in the Gram dtype (the dense token Gram's
    products) and in float64 (kernels, factorisation, solves), and the bytes its working set holds at its peak.

    The memory mirrors the code: the kernel route builds U·U'ᵀ and V·V'ᵀ before their product (three n×n
    float64 arrays), then holds the kernel and its Cholesky factor (two) and n×m solves; the dense route holds
    two D×D float64 arrays (the Gram and its gathered copy, then the Gram and its factor).
    """

    route: str
    gram_flops: float  # the dense token Gram's products, in compute.gram_dtype
    fp64_flops: float  # kernels, Gram of response rows, solves: float64 GEMM-like work
    factor_flops: float  # the Cholesky factorisation (n³/3 or D³/3), float64
    peak_bytes: int

    @property
    def flops(self) -> float:
        return self.gram_flops + self.fp64_flops + self.factor_flops


def route_estimates(n: int, D: int, row_dim: int, gram_width: int, n_rhs: int, token: bool,
                    chunk: int = 4096, refine_steps: int = 0) -> dict[str, RouteEstimate]:
    """Both exact routes for n curvature rows of size D and n_rhs right-hand sides (flops: 2 per multiply-add,
    n³/3 for a Cholesky factorisation). ``row_dim`` is the work per entry of the n×n kernel, ``gram_width`` the
    multiply-adds per row of the D×D Gram; ``token`` says the rows are token factors (u_t, v_t), formed in
    chunks of ``chunk`` rows when a product needs them explicitly; ``refine_steps`` float64 refinement steps
    follow each dense solve when the Gram's products are cheaper than float64 (each applies RᵀR through the
    rows: 4·n·n_rhs·D, and the factor: 2·D²·n_rhs)."""
    rows_chunk = 8 * min(n, chunk) * D if token else 0
    kernel_build = 3 if token else 2
    kernel = RouteEstimate(
        "kernel", 0.0, 2.0 * n * n * row_dim + 4.0 * n * n_rhs * D + 4.0 * n * n * n_rhs, n**3 / 3,
        8 * max(kernel_build * n * n, n * n + 2 * n * n_rhs) + rows_chunk,
    )
    gram = 2.0 * n * gram_width
    refine = refine_steps * (4.0 * n * n_rhs * D + 2.0 * n_rhs * D * D)
    dense = RouteEstimate(
        "dense", gram if token else 0.0,
        (0.0 if token else gram) + 2.0 * n_rhs * D * D + 2.0 * n_rhs * n_rhs * D + refine,
        D**3 / 3, 8 * (2 * D * D + D * n_rhs) + (rows_chunk + 8 * 4 * D * n_rhs if refine_steps else 0),
    )
    return {"kernel": kernel, "dense": dense}


def pick_route(estimates: dict[str, RouteEstimate], setting: str, limit_bytes: float | None,
               seconds) -> tuple[str, str]:
    """(route, why): a fixed setting as given; 'auto' the faster route by ``seconds(estimate)`` among those whose
    working set fits ``limit_bytes`` (None: no limit), or the smaller working set when neither fits."""
    if setting != "auto":
        return setting, "set by curvature.solver"
    fits = [e for e in estimates.values() if limit_bytes is None or e.peak_bytes <= limit_bytes]
    if not fits:
        best = min(estimates.values(), key=lambda e: e.peak_bytes)
        return best.route, f"neither route fits {_gib(limit_bytes)} free; {best.route} needs least"
    fastest = min(estimates.values(), key=seconds)
    best = min(fits, key=seconds)
    other = next(e for e in estimates.values() if e.route != best.route)
    if best is fastest:
        return best.route, f"faster ({seconds(best):.3g} s against {seconds(other):.3g} s)"
    return best.route, (f"{other.route} would be faster but needs {_gib(other.peak_bytes)}, more than "
                        f"{_gib(limit_bytes)} free")


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


# Refinement steps (exact applications of H) the estimates assume: a solve took 3 after float32 products and 4
# (D 13,440) or 5 (D 3,360) after emulated TF32 products, the HINV quadratic form 2 after either
# (bench/gram_dtype_error.py, bench/RESULTS.md).
REFINE_STEPS_ESTIMATE = {"quad": 2, "solve": 5}


def refine_steps(token: bool, gram_dtype: str, quad: bool = True) -> int:
    """Steps for a factorisation whose solves serve the quadratic form A H⁻¹ Aᵀ (quad) or plain solves."""
    return REFINE_STEPS_ESTIMATE["quad" if quad else "solve"] if token and gram_dtype != "float64" else 0


def rows_estimates(rows: CurvatureRows, n_rhs: int, quad: bool = True) -> dict[str, RouteEstimate]:
    return route_estimates(rows.n, rows.D, rows.row_dim, rows.gram_width, n_rhs, rows.token, rows.chunk,
                           refine_steps(rows.token, rows.gram_dtype, quad))


def choose_route(rows: CurvatureRows, n_rhs: int, setting: str, limit_bytes: float | None = None,
                 quad: bool = True) -> str:
    """The route ``factor`` takes: by the flop counts at equal rates (the planner, planning.estimate, applies a device's
    rates to the same estimates), among the routes whose working set fits ``limit_bytes``."""
    return pick_route(rows_estimates(rows, n_rhs, quad), setting, limit_bytes, lambda e: e.flops)[0]


