"""Same numbers, same objects: this tree against another commit, for changes that must not change a result.

Runs the default job and a float64 job (tiny model, projection off on two modules, token curvature per prompt,
influence rows) with this tree and with ``--base`` (a git worktree in a temporary directory, imported ahead of
any installed copy), then compares bitwise: every array of similarity.npz and influence_rows.npz, and results.json's
statistics (similarity, influence summary, validation, per-module contributions and damping). It also renders
the cluster objects (`influence-job render`) with both and compares them, and `influence-job plan --json`'s
estimates with rates left out (the CPU rates are measured, so they differ run to run). Then the readers: each
tree regenerates the reports from the base's outputs, publishes them and compares the base's default run with
ours; the pages, files and tables must be byte for byte the same.

    python bench/same_numbers.py --base HEAD~3      # prints one line per comparison; exit 1 when any differs
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FLOAT64 = ["--set", "model.dtype=float64", "--set", "compute.factor_dtype=float64", "--set", "projection.kind=none",
           "--set", "modules=[layers.1.self_attn.k_proj,layers.1.mlp.down_proj]", "--set", "curvature.scope=per_prompt",
           "--set", "diagnostics.unprojected_module=null"]
CONFIGS = {"default": [], "float64": FLOAT64}
# results.json's numbers; timings, paths, dates and the environment legitimately differ between two runs.
STATISTICS = ("similarity", "influence", "validation", "n_responses", "n_prompts", "n_positions", "n_response_tokens",
              "unprojected_comparison", "curvature_similarity")
MODULE_NUMBERS = ("name", "D", "damping", "solver", "factorisations", "failed_factorisations", "contribution",
                  "gram_dtype", "refinement_steps")


# The tree's package, not an installed one: an editable install's import hook would otherwise win over sys.path.
FROM_TREE = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]; "
             "sys.path.insert(0, sys.argv.pop(1)); ")


def python(tree: Path, code: str, args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", FROM_TREE + code, str(tree), *args], cwd=cwd, capture_output=True,
                          text=True)


def cli(tree: Path, args: list[str], cwd: Path, allowed: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
    done = python(tree, "import runpy; runpy.run_module('influence_job', run_name='__main__')", args, cwd)
    if done.returncode not in allowed:
        sys.exit(f"influence-job {' '.join(args)} ({tree}) failed with exit {done.returncode}:\n{done.stderr[-3000:]}")
    return done


def run_outputs(tree: Path, work: Path) -> dict[str, Path]:
    where = python(tree, "import influence_job; print(influence_job.__file__)", []).stdout.strip()
    if not where.startswith(str(tree)):  # a shadowing copy would compare a tree with itself
        sys.exit(f"{tree} imports influence_job from {where!r}; the comparison would be meaningless")
    out = {}
    work.mkdir(parents=True, exist_ok=True)
    for name, extra in CONFIGS.items():
        out[name] = work / name
        cli(tree, ["run", "-q", "--output", str(out[name]), *extra], work)
    return out


def numbers(results: dict) -> dict:
    kept = {k: results.get(k) for k in STATISTICS}
    kept["modules"] = [{k: m.get(k) for k in MODULE_NUMBERS} for m in results["modules"]]
    return kept


def same_arrays(a: Path, b: Path) -> list[str]:
    with np.load(a, allow_pickle=False) as x, np.load(b, allow_pickle=False) as y:
        if sorted(x.files) != sorted(y.files):
            return [f"{a.name}: arrays {sorted(x.files)} against {sorted(y.files)}"]
        return [f"{a.name}[{k}] differs" for k in x.files
                if x[k].dtype != y[k].dtype or x[k].shape != y[k].shape or x[k].tobytes() != y[k].tobytes()]


def compare_runs(ours: dict[str, Path], theirs: dict[str, Path]) -> list[str]:
    problems = []
    for name in CONFIGS:
        for npz in ("similarity.npz", "influence_rows.npz"):
            found = same_arrays(ours[name] / npz, theirs[name] / npz)
            problems += [f"{name}: {p}" for p in found]
            print(f"{name} {npz}: {'identical (bitwise)' if not found else 'DIFFERS'}")
        a = numbers(json.loads((ours[name] / "results.json").read_text()))
        b = numbers(json.loads((theirs[name] / "results.json").read_text()))
        ok = json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
        print(f"{name} results.json statistics: {'identical' if ok else 'DIFFER'}")
        problems += [] if ok else [f"{name}: results.json statistics differ"]
    return problems


def compare_rendered(tree: Path, base: Path, work: Path) -> list[str]:
    problems = []
    for label, t in (("ours", tree), ("base", base)):
        cli(t, ["render", "--out", str(work / f"rendered-{label}")], work)
    for f in sorted((work / "rendered-ours").iterdir()):
        other = work / "rendered-base" / f.name
        ok = other.exists() and other.read_bytes() == f.read_bytes()
        print(f"render {f.name}: {'identical' if ok else 'DIFFERS'}")
        problems += [] if ok else [f"rendered {f.name} differs"]
    return problems


def compare_readers(tree: Path, base: Path, ours: dict[str, Path], theirs: dict[str, Path], work: Path) -> list[str]:
    """What each tree's readers make of the same files: the reports regenerated from the base's outputs, publish's
    output parameters and report copies, and compare's table of the base's default run against ours."""
    made: dict[str, dict[str, str | bytes]] = {}
    for label, t in (("ours", tree), ("base", base)):
        got = made[label] = {}
        for name, src in theirs.items():
            copy = work / f"readers-{label}" / name
            shutil.copytree(src, copy)
            cli(t, ["report", str(copy)], work)
            got |= {f"{name} {f}": (copy / f).read_bytes() for f in ("report.md", "report.html")}
            published = work / f"published-{label}" / name
            got[f"{name} publish log"] = cli(t, ["publish", "--results", str(src), "--out", str(published)], work,
                                             (0, 1)).stdout
            got |= {f"{name} publish {f.name}": f.read_bytes() for f in sorted(published.iterdir())}
        got["compare --format json"] = cli(t, ["compare", "--format", "json", str(theirs["default"]),
                                               str(ours["default"])], work, (0, 1)).stdout
    problems = []
    for key, value in made["ours"].items():
        ok = made["base"].get(key) == value
        print(f"{key}: {'identical' if ok else 'DIFFERS'}")
        problems += [] if ok else [f"{key} differs"]
    return problems + [f"{key} missing" for key in made["base"].keys() - made["ours"].keys()]


def compare_plans(tree: Path, base: Path, work: Path) -> list[str]:
    def estimates(t: Path) -> dict:
        plan = json.loads(cli(t, ["plan", "--json", "--device", "h200"], work).stdout)
        return {k: plan[k] for k in ("seconds", "peak_device_bytes", "peak_host_bytes", "modules", "warnings")} | {
            "phases": [{k: v for k, v in p.items() if k != "peak_host_bytes"} for p in plan["phases"]]}

    a, b = estimates(tree), estimates(base)
    for plan in (a, b):  # the host baseline is this process's resident size, which is not a result
        plan.pop("peak_host_bytes")
    ok = json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    print(f"plan --device h200 estimates: {'identical' if ok else 'DIFFER'}")
    return [] if ok else ["plan estimates differ"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the commit to compare with (e.g. the one before a refactor)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="same-numbers-") as tmp:
        work, base = Path(tmp), Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", str(base), args.base], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            ours, theirs = run_outputs(ROOT, work / "ours"), run_outputs(base, work / "theirs")
            problems = compare_runs(ours, theirs)
            problems += compare_readers(ROOT, base, ours, theirs, work)
            problems += compare_rendered(ROOT, base, work)
            problems += compare_plans(ROOT, base, work)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, check=True)
    print("same numbers and objects as", args.base if not problems else "DIFFERENCES: " + "; ".join(problems))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
