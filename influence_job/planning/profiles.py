"""Device profiles: the sustained rates (flop/s per kind of work) and memory the planner prices a run with.

GPU profiles carry the rates docs/method.md's measured figures imply; a CPU's are measured in the process that
plans (a GEMM per dtype and a Cholesky, about a second), because CPUs differ too much to tabulate.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, replace

import torch

from influence_job.base.memory import meminfo_bytes

GiB = 2**30
TB = 1e12


@dataclass(frozen=True)
class DeviceProfile:
    """Sustained rates (flop/s) per kind of work, memory, and where the figures come from."""

    name: str
    memory_bytes: float
    rates: dict  # float64 (GEMM), float64_factor (Cholesky), float32, tf32, bfloat16, float16
    host_overhead_bytes: float  # host memory a process on this device holds beyond its arrays (CUDA context)
    source: str
    gpu: bool = True
    timed: bool = True  # False: rates not measured (all 1, so a route is picked by flops, as the engine does)

    def rate(self, kind: str) -> float:
        return self.rates[kind]


# H100 and H200 share the GH100 chip, so the same rates; they differ in memory. Rates: the original system's H200
# measurements, quoted in bench/RESULTS.md (a float64 Cholesky and the token Gram in float32, TF32 and bfloat16);
# the float64 GEMM rate is 85 % of the chip's float64 tensor-core peak (67 TF/s), an assumption until bench/gpu.sh
# measures it.
_GH100_RATES = {"float64": 0.85 * 67 * TB, "float64_factor": 31 * TB, "float32": 54 * TB, "tf32": 227 * TB,
                "bfloat16": 695 * TB, "float16": 695 * TB}
PROFILES = {
    "h200": DeviceProfile("h200", 143_771 * 2**20, _GH100_RATES, 1.0 * GiB,
                          "NVIDIA H200 (141 GB): rates from the original system's H200 measurements, float64 GEMM "
                          "assumed"),
    "h100": DeviceProfile("h100", 81_559 * 2**20, _GH100_RATES, 1.0 * GiB,
                          "NVIDIA H100 SXM (80 GB): H200 rates (same chip), float64 GEMM assumed"),
}


def _median_seconds(fn, repeats: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


@functools.cache
def cpu_profile(measure: bool = True) -> DeviceProfile:
    """This machine's CPU, measured once per process (about a second): GEMM rates for each dtype at n = 1,024
    and a float64 Cholesky at n = 2,048 (small sizes understate the rates of large factorisations), and the host
    memory (MemTotal). ``measure=False``: the memory only, rates left at 1 (a plan of flops, no times), for a
    run that needs no times and should not spend the second."""
    if not measure:
        return DeviceProfile("cpu", meminfo_bytes("MemTotal") or float("inf"), dict.fromkeys(
            ("float64", "float64_factor", "float32", "tf32", "bfloat16", "float16"), 1.0), 0.0,
            "this machine's CPU, rates not measured", gpu=False, timed=False)
    n = 1024
    rates = {}
    for kind, dtype in (("float64", torch.float64), ("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        a = torch.randn(n, n, dtype=torch.float64).to(dtype)
        rates[kind] = 2 * n**3 / _median_seconds(lambda a=a: a @ a)
    rates["tf32"] = rates["float32"]
    rates["float16"] = rates["bfloat16"]
    m = 2048
    spd = torch.randn(m, m, dtype=torch.float64)
    spd = spd @ spd.T + m * torch.eye(m, dtype=torch.float64)
    rates["float64_factor"] = m**3 / 3 / _median_seconds(lambda: torch.linalg.cholesky(spd), repeats=1)
    return DeviceProfile("cpu", meminfo_bytes("MemTotal") or float("inf"), rates, 0.0,
                         f"this machine's CPU, {torch.get_num_threads()} threads, GEMM/Cholesky rates measured now",
                         gpu=False)


def profile(name: str) -> DeviceProfile:
    if name == "cpu":
        return cpu_profile()
    return PROFILES[name]


def device_profile(device: torch.device, measure: bool = True) -> DeviceProfile:
    """The profile of the device a run is on: its GPU's (H100/H200 rates; the memory the GPU reports), or this
    CPU's, measured (``measure=False``: not, see cpu_profile)."""
    if device.type != "cuda":
        return cpu_profile(measure)
    props = torch.cuda.get_device_properties(device)
    base = PROFILES["h100" if "H100" in props.name else "h200"]
    return replace(base, name=props.name, memory_bytes=float(props.total_memory),
                   source=f"{props.name}: {base.source.split(': ', 1)[1]}")
