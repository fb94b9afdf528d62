#!/usr/bin/env bash
# Every GPU figure of bench/RESULTS.md in one device call (the device tool allows 15 minutes a session):
# the machine, the token Gram (float64 and TF32 products), the error of TF32/float32 Gram products, the
# capture's hook overhead, the default diagnostic on the 1.5B-shaped model (the default TF32 Gram products
# refined to float64 solves, and float64 products; each beside the planner's estimate), the CLI's default job on the GPU, and the bergson peer when it is
# importable. Each step writes $OUT/<step>.txt; a failed or timed-out step does not stop the others.
#
# The device machine has no network. The project runs from the working tree (PYTHONPATH), so nothing is
# installed; if the image lacks a dependency (pydantic, pyyaml, prometheus-client, tqdm, pyarrow), the env step
# says which, and wheels for them can be carried in WHEELS (default .gpu-wheels/, installed offline).
#
# Run: bash bench/gpu.sh              on the device machine
#      SMALL=1 bash bench/gpu.sh      the same steps at CPU size (a dry run of the script itself)
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-bench-out}
WHEELS=${WHEELS:-.gpu-wheels}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

step() {
    local name=$1 limit=$2
    shift 2
    echo "== $name"
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1
    echo "== $name: exit $? after $((SECONDS - start)) s"
    tail -n 12 "$OUT/$name.txt"
}

if [ -d "$WHEELS" ]; then
    pip install --no-index --find-links "$WHEELS" pydantic pyyaml prometheus-client tqdm pyarrow >"$OUT/wheels.txt" 2>&1
fi
step env 60 python -c '
import importlib, platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
print("devices", [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])
for name in ["transformers", "pydantic", "yaml", "prometheus_client", "tqdm", "pyarrow", "numpy", "pynvml", "bergson"]:
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "present"))
    except ImportError as exc:
        print(name, "MISSING", exc)
'

if [ -n "${SMALL:-}" ]; then
    step token_gram_float64 300 python bench/token_gram.py --small --device cpu --repeats 1
    step gram_dtype_error 300 python bench/gram_dtype_error.py --small
    step token_products 120 python bench/token_products.py --small
    step capture_overhead 300 python bench/capture_overhead.py --small --device cpu --repeats 1
    step default_diagnostic 300 python bench/default_diagnostic.py --small --device cpu
    step cli_default 300 python -m influence_job run -q --set compute.device=cpu --output "$OUT/cli-default"
else
    step token_gram_float64 120 python bench/token_gram.py --device cuda --dtype float64
    step token_scores 120 python bench/token_scores.py --device cuda
    step token_gram_tf32 120 python bench/token_gram.py --device cuda --dtype tf32
    step token_products 120 python bench/token_products.py --device cuda
    step gram_dtype_error 180 python bench/gram_dtype_error.py --device cuda
    step capture_overhead 180 python bench/capture_overhead.py --device cuda --dtype bfloat16
    step default_diagnostic 240 python bench/default_diagnostic.py --device cuda
    step default_diagnostic_float64 240 python bench/default_diagnostic.py --device cuda --gram-dtype float64
    step cli_default 120 python -m influence_job run -q --set compute.device=cuda --output "$OUT/cli-default" \
        --set "metrics.dir=$OUT/metrics"
    # The rank, not the sidecar, reports its GPU's memory (the sidecar is given no GPU): check the series exist.
    step gpu_metrics 60 python -c '
import sys
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
registry = CollectorRegistry()
MultiProcessCollector(registry, path=sys.argv[1])
samples = [s for m in registry.collect() for s in m.samples if "gpu_memory" in s.name]
print("\n".join(f"{s.name} {s.labels} {s.value:.0f}" for s in samples))
sys.exit(0 if any(s.name == "influence_job_gpu_memory_used_bytes" and s.value > 0 for s in samples) else 1)
' "$OUT/metrics"
    if python -c 'import bergson' 2>/dev/null; then
        step peer_bergson 240 python bench/peer_bergson.py --model qwen2.5-1.5b-random --device cuda \
            --dtype bfloat16
    else
        echo "== peer_bergson: skipped, bergson is not importable on this machine"
    fi
fi
