"""The cluster job's objects: what Argo accepts (its JSON schema, and the values its decoder requires before any
parameter is substituted: tests/argo_schema.py), Hera round trip, `hera generate yaml`, the Helm chart rendered
by a real Helm engine, kubernetes-validate for core objects, hadolint for the Dockerfile."""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import sys
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from argo_schema import decode_errors, needs_schema, schema_errors
from hera.workflows import models as hm

from influence_job.cli.main import main
from influence_job.cluster.chart import CHART_DIR, generated_files
from influence_job.cluster.settings import ClusterSettings, load_settings
from influence_job.cluster.workflows import build_all, build_submission

ROOT = Path(__file__).resolve().parents[2]
K8S_VERSION = "1.33.0"
CUSTOM_VALUES = {"gpus": 4, "gpuProduct": "NVIDIA-H100-80GB-HBM3", "nightly": {"schedule": "30 3 * * 1-5"},
                 "image": "registry.local/influence-job:dev", "retryLimit": 4,
                 "priorityClassName": "gpu-batch", "semaphore": {"configMap": "gpu-pool", "key": "h200"},
                 "artifactRepository": {"configMap": "artifact-repositories", "key": "s3"},
                 "security": {"runAsUser": 2000, "readOnlyRootFilesystem": False}}
HERA_MODELS = {"WorkflowTemplate": hm.WorkflowTemplate, "CronWorkflow": hm.CronWorkflow, "Workflow": hm.Workflow}


def hera_docs(settings: ClusterSettings) -> list[dict]:
    return [obj.to_dict() for obj in build_all(settings).values()]


@pytest.mark.parametrize("settings", [ClusterSettings(), ClusterSettings(gpus=2, nightly={"compare": True})])
def test_objects_round_trip_through_heras_models(settings):
    docs = hera_docs(settings) + [build_submission(settings).to_dict()]
    assert {d["kind"] for d in docs} == {"WorkflowTemplate", "CronWorkflow", "Workflow"}
    for doc in docs:
        model = HERA_MODELS[doc["kind"]].model_validate(doc)
        assert model.model_dump(by_alias=True, exclude_none=True) == doc


def rendered_objects(tmp_path: Path) -> dict[str, dict]:
    """Every Argo object the project renders, by where it comes from: Hera's (default and non-default settings),
    the Helm chart's (default values and a non-default values file) and the Workflows `submit` builds."""
    custom = load_settings(_write(tmp_path / "custom.yaml", CUSTOM_VALUES))
    docs = {}
    for source, objects in (("hera-defaults", hera_docs(ClusterSettings())), ("hera-custom", hera_docs(custom)),
                            ("chart-defaults", render_chart({})), ("chart-custom", render_chart(CUSTOM_VALUES))):
        for doc in objects:
            if doc["apiVersion"].startswith("argoproj.io"):
                docs[f"{source}/{doc['kind']}"] = doc
    docs["submit-defaults/Workflow"] = build_submission(ClusterSettings()).to_dict()
    docs["submit-gpus-4/Workflow"] = build_submission(ClusterSettings(gpus=4), "/data/m", "/data/d.jsonl",
                                                      "--set projection.factor=16").to_dict()
    return docs


@needs_schema
def test_every_rendered_object_holds_only_what_argo_accepts(tmp_path):
    """Argo's field names and nesting (its JSON schema), and what its decoder requires before substitution: each
    quantity parses, each integer and boolean field holds one, no templated value where the type is not a
    string (tests/argo_schema.py)."""
    docs = rendered_objects(tmp_path)
    assert {k.split("/")[1] for k in docs} == {"WorkflowTemplate", "CronWorkflow", "Workflow"} and len(docs) == 10
    for where, doc in docs.items():
        assert schema_errors(doc) == [], where
        assert decode_errors(doc) == [], where


@needs_schema
def test_decode_check_fails_where_argo_cannot_decode():
    """The check is shown failing on the template as it was (the GPU count templated into the container's resource
    quantities, which the schema passes as a plain string), on the chart as it was (Helm printed 1209600 from the
    values as 1.2096e+06, a float in an integer field), on a templated integer and on a string boolean."""
    wt = hera_docs(ClusterSettings())[0]
    run = next(t for t in wt["spec"]["templates"] if t["name"] == "run")
    for side in ("requests", "limits"):
        run["container"]["resources"][side]["nvidia.com/gpu"] = "{{inputs.parameters.gpus}}"
    assert schema_errors(wt) == []  # what the JSON schema cannot tell
    problems = decode_errors(wt)
    assert len(problems) == 2 and all("nvidia.com/gpu" in p and "not a Kubernetes quantity" in p for p in problems)
    run["sidecars"][0]["ports"][0]["containerPort"] = "{{inputs.parameters.port}}"
    wt["spec"]["automountServiceAccountToken"] = "false"
    wt["spec"]["ttlStrategy"]["secondsAfterFailure"] = 1.2096e6  # how Helm prints a large integer from values
    problems = decode_errors(wt)
    assert any(p.startswith("spec.templates[0].sidecars[0].ports[0].containerPort") and "templated" in p
               for p in problems)
    assert any(p.startswith("spec.automountServiceAccountToken") and "not a boolean" in p for p in problems)
    assert any(p.startswith("spec.ttlStrategy.secondsAfterFailure") and "not an integer" in p for p in problems)


@needs_schema
def test_schema_patch_rejects_a_misspelled_key():
    """Argo's field names (the schema, with unknown keys made errors): a misspelt key must not pass unnoticed and
    its setting be lost."""
    doc = hera_docs(ClusterSettings())[0]
    doc["spec"]["templates"][0]["retryStrategi"] = doc["spec"]["templates"][0].pop("retryStrategy")
    assert any("retryStrategi" in e for e in schema_errors(doc))


def test_workflow_template_shape():
    wt = hera_docs(ClusterSettings())[0]
    run = next(t for t in wt["spec"]["templates"] if t["name"] == "run")
    gpus = {"nvidia.com/gpu": "{{inputs.parameters.gpus}}"}
    assert json.loads(run["podSpecPatch"]) == {"containers": [{"name": "main", "resources": {
        "requests": gpus, "limits": gpus}}]}
    assert "nvidia.com/gpu" not in json.dumps(run["container"]["resources"])
    assert "torchrun --nproc-per-node \"$GPUS\"" in run["container"]["command"][2]
    assert run["nodeSelector"] == {"nvidia.com/gpu.product": "{{inputs.parameters.gpu-product}}"}
    assert run["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert run["retryStrategy"]["retryPolicy"] == "Always" and run["retryStrategy"]["limit"] == 2
    assert run["retryStrategy"]["backoff"] == {"duration": "1m", "factor": 2, "maxDuration": "30m"}
    assert wt["spec"]["activeDeadlineSeconds"] == 43200 and wt["spec"]["podGC"] == {"strategy": "OnPodSuccess"}
    assert wt["spec"]["ttlStrategy"] == {"secondsAfterSuccess": 604800, "secondsAfterFailure": 1209600}
    env = {e["name"]: e["value"] for e in run["container"]["env"]}
    assert env["NCCL_DEBUG"] == "WARN" and env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
    assert run["sidecars"][0]["ports"][0]["containerPort"] == 9400
    shm = next(v for v in wt["spec"]["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    args = {p["name"]: p["value"] for p in wt["spec"]["arguments"]["parameters"]}
    assert args["gpus"] == "8" and args["gpu-product"] == "NVIDIA-H200"
    publish = next(t for t in wt["spec"]["templates"] if t["name"] == "publish")
    assert {p["globalName"] for p in publish["outputs"]["parameters"]} >= {
        "rows-emitted", "validation-passed", "hinv-per-prompt-acc-acc-mean", "hessian-solve-seconds"}
    main_steps = next(t for t in wt["spec"]["templates"] if t["name"] == "main")["steps"]
    assert main_steps[0][0]["continueOn"] == {"failed": True, "error": True}  # evicted/deleted pods too
    assert main_steps[1][0]["name"] == "publish"
    publish_args = {p["name"]: p["value"] for p in main_steps[1][0]["arguments"]["parameters"]}
    assert publish_args["run-status"] == "{{steps.run.status}}"
    assert publish_args["run-exit-code"] == "{{steps.run.exitCode}}"
    assert {p["globalName"] for p in publish["outputs"]["parameters"]} >= {"nan-count", "failed-checks"}
    metric = wt["spec"]["metrics"]["prometheus"][0]
    assert metric["labels"] == [{"key": "status", "value": "{{workflow.status}}"}]
    cron = hera_docs(ClusterSettings())[1]["spec"]
    assert cron["schedules"] == ["0 2 * * *"] and cron["concurrencyPolicy"] == "Forbid"
    assert cron["timezone"] == "UTC"


def test_hera_generate_yaml_matches_render(tmp_path):
    subprocess.run(["hera", "generate", "yaml", str(ROOT / "workflows"), "--to", str(tmp_path / "hera")],
                   check=True, capture_output=True, timeout=120)
    assert main(["render", "--out", str(tmp_path / "cli")]) == 0
    generated = [d for f in sorted((tmp_path / "hera").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text())]
    rendered = [yaml.safe_load(f.read_text()) for f in sorted((tmp_path / "cli").glob("*.yaml"))]
    key = lambda d: d["kind"]  # noqa: E731
    assert sorted(generated, key=key) == sorted(rendered, key=key)


def test_render_takes_values_and_overrides(tmp_path, capsys):
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(CUSTOM_VALUES))
    assert main(["render", "--values", str(values), "--set", "nightly.timezone=Europe/Paris", "--out", "-"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    cron = next(d for d in docs if d["kind"] == "CronWorkflow")
    assert cron["spec"]["timezone"] == "Europe/Paris" and cron["spec"]["schedules"] == ["30 3 * * 1-5"]
    assert main(["render", "--set", "gpus=-1", "--out", "-"]) == 2
    assert "gpus" in capsys.readouterr().err


def test_committed_chart_files_are_generated_from_hera():
    for rel, text in generated_files().items():
        assert (CHART_DIR / rel).read_text() == text, f"{rel} is stale: run python -m influence_job.cluster.chart"


def render_chart(values: dict, namespace: str = "ml-research") -> list[dict]:
    chart = helm.Chart.load(CHART_DIR)
    out = chart.render(values, name="influence", namespace=namespace)
    return [d for path, text in sorted(out.items()) if path.endswith(".yaml") for d in yaml.safe_load_all(text) if d]


@pytest.mark.parametrize("values", [{}, CUSTOM_VALUES], ids=["defaults", "custom"])
def test_chart_argo_objects_equal_hera_objects(values, tmp_path):
    docs = render_chart(values)
    settings = load_settings(_write(tmp_path / "v.yaml", values)).model_copy(update={"namespace": "ml-research"})
    argo = sorted((d for d in docs if d["apiVersion"].startswith("argoproj.io")), key=lambda d: d["kind"])
    assert argo == sorted(hera_docs(settings), key=lambda d: d["kind"])


def _write(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


def test_chart_core_objects_pass_kubernetes_validate_strict():
    docs = render_chart({"podMonitor": {"enabled": True}})
    core = [d for d in docs if not d["apiVersion"].startswith(("argoproj.io", "monitoring.coreos.com"))]
    assert {d["kind"] for d in core} == {"ServiceAccount", "Role", "RoleBinding", "PersistentVolumeClaim",
                                         "ConfigMap", "Secret", "ClusterRole", "ClusterRoleBinding", "NetworkPolicy"}
    for doc in core:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    dashboard = next(d for d in core if d["metadata"]["name"] == "influence-job-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    monitor = next(d for d in docs if d["kind"] == "PodMonitor")
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"


def test_chart_switches():
    kinds = {d["kind"] for d in render_chart({"nightly": {"enabled": False},
                                               "rbac": {"create": False, "submitter": False},
                                               "resultsVolume": {"create": False}, "dashboard": {"enabled": False},
                                               "networkPolicy": {"enabled": False}})}
    assert kinds == {"WorkflowTemplate", "ConfigMap"}


def test_chart_strict_lint_is_clean(tmp_path):
    for values in ({}, CUSTOM_VALUES):
        report = helm.lint(str(CHART_DIR), values, strict=True, kube_version=f"v{K8S_VERSION}")
        assert report["messages"] == [] and report["errors"] == []


@pytest.mark.parametrize("bad", [
    {"gpus": -1}, {"gpus": 0}, {"nightly": {"schedule": "every night"}}, {"nightly": {"schedule": "0 2 * *"}},
    {"gpuz": 8}, {"memory": "lots"}, {"imagePullPolicy": "Sometimes"},
    {"networkPolicy": {"apiServerCidrs": ["the api server"]}}, {"networkPolicy": {"apiServerPorts": [0]}},
])
def test_values_schema_rejects_invalid_values(bad):
    chart = helm.Chart.load(CHART_DIR)
    with pytest.raises(helm.HelmError):
        chart.render(bad, name="influence", namespace="ml")


def test_dockerfile_passes_hadolint():
    proc = subprocess.run(["hadolint", str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    docker = (ROOT / "Dockerfile").read_text()
    assert "USER 10001" in docker and 'ENTRYPOINT ["influence-job"]' in docker


def test_run_script_keeps_the_checkpoint_with_the_workflow(tmp_path):
    """The run container's own shell script, run by sh as Argo would after substituting its parameters, with a
    stand-in `torchrun` on PATH that prints its arguments: the checkpoint path is keyed by the workflow's name
    (what a retried pod of the same workflow sees), not by the pod."""
    wt = hera_docs(ClusterSettings())[0]
    run = next(t for t in wt["spec"]["templates"] if t["name"] == "run")
    main_run = next(t for t in wt["spec"]["templates"] if t["name"] == "main")["steps"][0][0]
    places = {f"inputs.parameters.{p['name']}": p["value"] for p in main_run["arguments"]["parameters"]
              if p["name"] in ("out", "checkpoint")}  # what main gives the run template
    values = {**places, "workflow.name": "influence-diagnostic-x7k2p", "inputs.parameters.gpus": "8",
              "inputs.parameters.model": "/data/m", "inputs.parameters.dataset": "/data/d.jsonl",
              "inputs.parameters.overrides": "--set projection.factor=16"}

    def substitute(text: str) -> str:
        for key, value in values.items():  # the run's places first: they hold {{workflow.name}}
            text = text.replace("{{%s}}" % key, value)
        return text

    (tmp_path / "torchrun").write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    (tmp_path / "torchrun").chmod(0o755)
    env = {e["name"]: substitute(e.get("value", "")) for e in run["container"]["env"]}
    env["PATH"] = f"{tmp_path}:/usr/bin:/bin"
    env["METRICS_LINGER_SECONDS"] = "0"
    script = substitute(run["container"]["command"][2])
    words = subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=env, check=True).stdout.split()
    assert words[words.index("--output") + 1] == "/results/influence-diagnostic-x7k2p"
    assert "output.checkpoint_dir=/results/influence-diagnostic-x7k2p.ckpt" in words
    assert words[-2:] == ["--set", "projection.factor=16"]  # the user's overrides come last and win


def test_nightly_compares_by_default_and_publishes_the_verdict():
    cron = hera_docs(ClusterSettings())[1]
    args = {p["name"]: p["value"] for p in cron["spec"]["workflowSpec"]["arguments"]["parameters"]}
    assert args["compare"] == "true" and args["baseline"] == "/results/baseline"
    templates = {t["name"]: t for t in cron["spec"]["workflowSpec"]["templates"]}
    steps = [s["name"] for group in templates["nightly"]["steps"] for s in group]
    assert steps == ["diagnostic", "compare"]
    command = templates["compare"]["container"]["command"]
    assert command[:4] == ["influence-job", "compare", "{{inputs.parameters.baseline}}", "/results/{{workflow.name}}"]
    assert "--promote-if-missing" in command and "/results/{{workflow.name}}.compare" in command
    outputs = {p["name"]: p["valueFrom"]["path"] for p in templates["compare"]["outputs"]["parameters"]}
    assert outputs == {"verdict": "/tmp/outputs/verdict", "regressions": "/tmp/outputs/regressions",
                       "comparable": "/tmp/outputs/comparable"}


def evaluate_retry(expression: str, status: str, exit_code: str, message: str) -> bool:
    """The retry expression evaluated for one finished attempt.

    This stands in for Argo's expr-lang evaluator, which cannot run here: the expression's operators (==, in,
    &&, ||, matches, string literals and lists) are rewritten to their Python equivalents token by token, and
    `matches` searches with the same (?i) regular expression, as Go's regexp.MatchString does.
    """
    import re
    from types import SimpleNamespace

    py = re.sub(r'(lastRetry\.\w+) matches ("(?:[^"\\]|\\.)*")', r"_matches(\1, \2)", expression)
    py = py.replace("&&", " and ").replace("||", " or ")
    assert "matches" not in py.replace("_matches", "") and "!" not in py.replace("!=", "")
    last = SimpleNamespace(status=status, exitCode=exit_code, message=message)
    return eval(py, {"__builtins__": {}}, {"lastRetry": last, "_matches": lambda s, p: re.search(p, s) is not None})


# Argo passes lastRetry.exitCode as a string, "-1" when the attempt has none (the container never ran or never
# reported); the rows do the same.
@pytest.mark.parametrize("status,exit_code,message,retried", [
    ("Failed", "1", "Error (exit code 1)", False),  # validation failed: deterministic
    ("Failed", "2", "Error (exit code 2)", False),  # bad input
    ("Failed", "4", "Error (exit code 4)", False),  # a bug
    ("Failed", "3", "Error (exit code 3)", True),  # a rank died or timed out (NCCL, a lost GPU)
    ("Failed", "137", "OOMKilled (exit code 137)", True),  # the OOM killer / SIGKILL
    ("Failed", "143", "Error (exit code 143)", True),  # SIGTERM before the pod was gone
    ("Failed", "-1", "The node was low on resource: memory. Container run was using 250Gi.", True),  # eviction
    ("Failed", "-1", "Pod was evicted", True),
    ("Failed", "1", "The node was low on resource: memory.", True),  # evicted while the job was exiting
    # The node refused the pod at admission (the GPU device plugin not ready): it never ran.
    ("Failed", "-1", "Pod was rejected: Allocate failed due to no healthy devices present; cannot allocate "
                     "unhealthy devices nvidia.com/gpu, which is unexpected", True),
    ("Failed", "-1", "Pod was rejected: Node didn't have enough resource: nvidia.com/gpu", True),
    # No exit code and no message: the job decided nothing, so it is treated as transient (the limit bounds it).
    ("Failed", "-1", "", True),
    ("Error", "-1", "pod deleted", True),  # API eviction, drain, preemption: the pod is deleted
    ("Error", "-1", "node lost", True),
])
def test_retry_expression_retries_interruptions_and_not_failures(status, exit_code, message, retried):
    from influence_job.cluster.pods import RETRY_EXPRESSION

    run = next(t for t in hera_docs(ClusterSettings())[0]["spec"]["templates"] if t["name"] == "run")
    assert run["retryStrategy"]["expression"] == RETRY_EXPRESSION
    assert evaluate_retry(RETRY_EXPRESSION, status, exit_code, message) is retried


def strategic_merge(base, patch):
    """Kubernetes' strategic merge patch as far as the templates use it: maps merge key by key, lists of named
    objects (containers) merge by name, other values are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        return {**base, **{k: strategic_merge(base[k], v) if k in base else v for k, v in patch.items()}}
    if isinstance(base, list) and isinstance(patch, list) and all(isinstance(x, dict) and "name" in x
                                                                   for x in base + patch):
        names = {x["name"]: x for x in patch}
        merged = [strategic_merge(x, names.pop(x["name"])) if x["name"] in names else x for x in base]
        return merged + list(names.values())
    return patch


def argo_pod(wf_spec: dict, template: dict, gpus: str = "8") -> dict:
    """The Pod Argo makes for a container template: the workflow's pod security context and volumes, the
    template's container (named main) and sidecars (Argo's own init/wait containers left out), parameters filled
    in (gpus as given, every other one "x"), then the template's podSpecPatch merged in, as Argo does."""
    text = json.dumps(template).replace("{{inputs.parameters.gpus}}", gpus)
    template = json.loads(re.sub(r"\{\{[^}]+\}\}", "x", text))
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "influence-diagnostic-x7k2p-run"},
           "spec": {"securityContext": wf_spec["securityContext"], "volumes": wf_spec["volumes"],
                    "containers": [{"name": "main", **template["container"]}, *template.get("sidecars", [])],
                    "restartPolicy": "Never"}}
    for key in ("nodeSelector", "tolerations"):
        if key in template:
            pod["spec"][key] = template[key]
    if "podSpecPatch" in template:
        pod["spec"] = strategic_merge(pod["spec"], yaml.safe_load(template["podSpecPatch"]))
    return pod


@pytest.mark.parametrize("gpus", ["1", "4", "8"])
def test_the_gpu_count_reaches_requests_limits_and_torchrun_alike(gpus):
    """One argument, one meaning: the pod Argo makes from the run template requests and limits exactly `gpus`
    GPUs (a quantity Kubernetes parses), its sidecar none, and torchrun starts that many processes."""
    from kubernetes.utils import parse_quantity

    wt = hera_docs(ClusterSettings())[0]
    run = next(t for t in wt["spec"]["templates"] if t["name"] == "run")
    main_container, sidecar = argo_pod(wt["spec"], run, gpus)["spec"]["containers"]
    for side in ("requests", "limits"):
        assert parse_quantity(main_container["resources"][side]["nvidia.com/gpu"]) == int(gpus)
    assert main_container["resources"]["requests"]["memory"] == "256Gi"  # the patch adds, it does not replace
    assert "nvidia.com/gpu" not in json.dumps(sidecar)
    env = {e["name"]: e["value"] for e in main_container["env"]}
    assert env["GPUS"] == gpus and 'torchrun --nproc-per-node "$GPUS"' in main_container["command"][2]


@pytest.mark.parametrize("values", [{}, {"security": {"runAsUser": 2000, "fsGroup": 3000,
                                                      "readOnlyRootFilesystem": False}}], ids=["defaults", "custom"])
def test_pods_run_as_non_root_with_a_writable_tmp_and_pass_kubernetes_validate(values, tmp_path):
    """Every step's pod carries the security fields (from values, secure by default), and the Pod Argo would make
    passes kubernetes-validate strict."""
    settings = load_settings(_write(tmp_path / "v.yaml", values))
    docs = {d["kind"]: d for d in hera_docs(settings)}
    sec = values.get("security", {})
    for kind in ("WorkflowTemplate", "CronWorkflow"):
        spec = docs[kind]["spec"] if kind == "WorkflowTemplate" else docs[kind]["spec"]["workflowSpec"]
        assert spec["securityContext"] == {
            "runAsNonRoot": True, "runAsUser": sec.get("runAsUser", 10001), "runAsGroup": 10001,
            "fsGroup": sec.get("fsGroup", 10001), "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"}}
        assert {"name": "tmp", "emptyDir": {}} in spec["volumes"]
        for t in spec["templates"]:
            for c in ([t["container"]] if "container" in t else []) + t.get("sidecars", []):
                assert c["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                                "readOnlyRootFilesystem": sec.get("readOnlyRootFilesystem", True)}
                assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
                assert {"name": "HOME", "value": "/tmp/home"} in c["env"]
            if "container" in t:
                kubernetes_validate.validate(argo_pod(spec, t), K8S_VERSION, strict=True)
    chart = [d for d in render_chart({"security": sec} if sec else {}) if d["kind"] == "WorkflowTemplate"][0]
    assert chart["spec"]["securityContext"]["runAsNonRoot"] is True  # a YAML boolean, not the string "true"
    run = next(t for t in chart["spec"]["templates"] if t["name"] == "run")
    assert run["container"]["securityContext"]["readOnlyRootFilesystem"] is sec.get("readOnlyRootFilesystem", True)


def test_optional_workflow_fields_only_when_set(tmp_path):
    """Priority class, semaphore and artifacts are off by default — a cluster without a default artifact
    repository must not fail every workflow — and present, in Hera's objects and the chart's alike, when set."""
    plain = {d["kind"]: d for d in render_chart({})}
    for kind in ("WorkflowTemplate", "CronWorkflow"):
        spec = plain[kind]["spec"] if kind == "WorkflowTemplate" else plain[kind]["spec"]["workflowSpec"]
        assert not {"podPriorityClassName", "synchronization", "artifactRepositoryRef"} & set(spec)
    publish = next(t for t in plain["WorkflowTemplate"]["spec"]["templates"] if t["name"] == "publish")
    assert "artifacts" not in publish["outputs"]
    custom = {d["kind"]: d for d in render_chart(CUSTOM_VALUES)}
    spec = custom["WorkflowTemplate"]["spec"]
    assert spec["podPriorityClassName"] == "gpu-batch"
    assert spec["synchronization"] == {"semaphores": [{"configMapKeyRef": {"name": "gpu-pool", "key": "h200"}}]}
    assert spec["artifactRepositoryRef"] == {"configMap": "artifact-repositories", "key": "s3"}
    publish = next(t for t in spec["templates"] if t["name"] == "publish")
    assert publish["outputs"]["artifacts"][0]["name"] == "report"
    assert custom["CronWorkflow"]["spec"]["workflowSpec"]["synchronization"] == spec["synchronization"]


def test_chart_has_the_smallest_submitter_role():
    docs = render_chart({"rbac": {"submitterSubjects": [{"kind": "Group", "name": "ml-researchers",
                                                          "apiGroup": "rbac.authorization.k8s.io"}]}})
    role = next(d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "influence-job-submitter")
    assert role["rules"] == [
        {"apiGroups": ["argoproj.io"], "resources": ["workflows"], "verbs": ["create", "get", "list", "watch"]},
        {"apiGroups": ["argoproj.io"], "resources": ["workflowtemplates", "cronworkflows"], "verbs": ["get", "list"]},
        {"apiGroups": [""], "resources": ["pods", "pods/log", "events"], "verbs": ["get", "list"]},
        {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["secrets"],
         "resourceNames": ["influence-job-submitter.service-account-token"], "verbs": ["get"]},
    ]
    cluster_role = next(d for d in docs if d["kind"] == "ClusterRole")
    assert cluster_role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]},
                                     {"apiGroups": ["storage.k8s.io"], "resources": ["storageclasses"],
                                      "verbs": ["get"]}]
    binding = next(d for d in docs if d["kind"] == "RoleBinding" and d["metadata"]["name"] == "influence-job-submitter")
    cluster_binding = next(d for d in docs if d["kind"] == "ClusterRoleBinding")
    for b in (binding, cluster_binding):
        assert [s["name"] for s in b["subjects"]] == ["influence-job-submitter", "ml-researchers"]
    token = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"].startswith("influence-job-sub"))
    assert token["type"] == "kubernetes.io/service-account-token"
    assert token["metadata"]["annotations"] == {"kubernetes.io/service-account.name": "influence-job-submitter"}
    for doc in (role, binding, cluster_role, cluster_binding, token):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    names = {d["metadata"]["name"] for d in render_chart({"rbac": {"submitter": False}})}
    assert not {n for n in names if "submitter" in n or "preflight" in n}
    assert not [d for d in render_chart({"rbac": {"preflight": False}}) if d["kind"].startswith("Cluster")]


def test_only_the_publish_step_gets_a_token_and_its_role_is_exactly_the_status_writes():
    """Pods mount no service-account token; Argo's executor uses its own Secret; the publish step, the one step
    that calls the API, runs as the publisher account whose Role is exactly cluster.status.PUBLISHER_RULES."""
    from influence_job.cluster.status import PUBLISHER_RULES

    docs = render_chart({})
    wt = next(d for d in docs if d["kind"] == "WorkflowTemplate")
    assert wt["spec"]["automountServiceAccountToken"] is False
    assert wt["spec"]["executor"] == {"serviceAccountName": "influence-job"}
    for t in wt["spec"]["templates"]:
        if t["name"] == "publish":
            assert t["serviceAccountName"] == "influence-job-publisher" and t["automountServiceAccountToken"] is True
        else:
            assert "automountServiceAccountToken" not in t and "serviceAccountName" not in t
    cron = next(d for d in docs if d["kind"] == "CronWorkflow")["spec"]["workflowSpec"]
    assert cron["automountServiceAccountToken"] is False and cron["executor"] == wt["spec"]["executor"]
    executor_token = next(d for d in docs if d["metadata"]["name"] == "influence-job.service-account-token")
    assert executor_token["metadata"]["annotations"]["kubernetes.io/service-account.name"] == "influence-job"
    role = next(d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "influence-job-publisher-status")
    assert role["rules"] == PUBLISHER_RULES
    binding = next(d for d in docs if d["kind"] == "RoleBinding" and d["metadata"]["name"] == role["metadata"]["name"])
    assert binding["subjects"][0]["name"] == "influence-job-publisher"
    on = next(d for d in render_chart({"security": {"automountServiceAccountToken": True}})
              if d["kind"] == "WorkflowTemplate")
    assert on["spec"]["automountServiceAccountToken"] is True


def test_metrics_sidecar_sees_no_gpu():
    wt = hera_docs(ClusterSettings())[0]
    run = next(t for t in wt["spec"]["templates"] if t["name"] == "run")
    sidecar, = run["sidecars"]
    assert {"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"} in sidecar["env"]
    assert "nvidia.com/gpu" not in str(sidecar.get("resources"))
    assert "nvidia.com/gpu" in run["podSpecPatch"] and '"name": "main"' in run["podSpecPatch"]


def _run_script(tmp_path: Path, torchrun: str, linger: str) -> subprocess.Popen:
    """The run container's script under sh, with a stand-in `torchrun` (a shell script) on PATH."""
    wt = hera_docs(ClusterSettings())[0]
    run = next(t for t in wt["spec"]["templates"] if t["name"] == "run")
    (tmp_path / "torchrun").write_text("#!/bin/sh\n" + torchrun)
    (tmp_path / "torchrun").chmod(0o755)
    env = {e["name"]: re.sub(r"\{\{[^}]+\}\}", "x", e.get("value", "")) for e in run["container"]["env"]}
    env.update(PATH=f"{tmp_path}:/usr/bin:/bin", METRICS_LINGER_SECONDS=linger, GPUS="1")
    return subprocess.Popen(["sh", "-c", re.sub(r"\{\{[^}]+\}\}", "x", run["container"]["command"][2])],
                            env=env, cwd=tmp_path)


def test_run_script_lingers_for_the_last_scrape_and_keeps_the_exit_code(tmp_path):
    import time

    t0 = time.monotonic()
    proc = _run_script(tmp_path, "exit 3\n", linger="1")
    assert proc.wait(timeout=30) == 3  # the job's own code (here: a rank failure) reaches Argo unchanged
    assert time.monotonic() - t0 >= 1  # the pod stayed up for the sidecar's last scrape


def test_run_script_passes_sigterm_on_and_reports_143(tmp_path):
    """Eviction: the pod's shell gets SIGTERM; torchrun must get it too, and the step must end 143 (retried), not
    whatever code torchrun chooses, and without lingering into the kubelet's grace period."""
    import signal
    import time

    marker = tmp_path / "got-term"
    proc = _run_script(tmp_path, f"trap 'touch {marker}; exit 1' TERM\nwhile :; do sleep 0.1; done\n", linger="60")
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 143
    assert marker.exists()


def test_chart_generator_has_help_and_refuses_a_directory_that_is_no_chart(tmp_path, capsys, monkeypatch):
    """`python -m influence_job.cluster.chart --help` prints its usage and writes nothing (it once wrote the chart
    into a new directory named --help); a directory without Chart.yaml is refused, untouched."""
    from influence_job.cluster.chart import main as chart_main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        chart_main(["--help"])
    assert exit_.value.code == 0 and "chart_dir" in capsys.readouterr().out
    assert chart_main([str(tmp_path / "elsewhere")]) == 2
    assert "no Chart.yaml" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# --- the NetworkPolicy -------------------------------------------------------------------------------------------

JOB = {"app.kubernetes.io/part-of": "influence-job", "app.kubernetes.io/component": "run"}


def _peer_matches(peer: dict, flow: dict, policy_namespace: str) -> bool:
    """One NetworkPolicyPeer against the other end of a flow (Kubernetes' semantics: a podSelector alone means the
    policy's namespace; namespaceSelector matches the namespace's labels, here its automatic name label)."""
    if "ipBlock" in peer:
        return flow.get("ip") is not None and ipaddress.ip_address(flow["ip"]) in ipaddress.ip_network(
            peer["ipBlock"]["cidr"])
    if "ip" in flow and "namespace" not in flow:
        return False  # an address outside the cluster is matched by ipBlock only
    ns_sel, pod_sel = peer.get("namespaceSelector"), peer.get("podSelector")
    ns_labels = {"kubernetes.io/metadata.name": flow["namespace"]}
    ns_ok = (flow["namespace"] == policy_namespace if ns_sel is None
             else all(ns_labels.get(k) == v for k, v in ns_sel.get("matchLabels", {}).items()))
    labels = flow.get("labels", {})
    pod_ok = pod_sel is None or all(labels.get(k) == v for k, v in pod_sel.get("matchLabels", {}).items())
    return ns_ok and pod_ok


def allowed(policy: dict, direction: str, flow: dict) -> bool:
    """Whether the policy lets a flow to or from one of its pods through: a stand-in for the network plugin that
    enforces NetworkPolicies (none runs here). Every selected pod is a job pod; ``flow`` is the other end
    (namespace and labels, or an ip) with a port and protocol."""
    peers_key = "to" if direction == "egress" else "from"
    for rule in policy["spec"].get(direction, []):
        ports = rule.get("ports") or [{}]
        port_ok = any(p.get("port", flow["port"]) == flow["port"] and p.get("protocol", "TCP") == flow.get(
            "protocol", "TCP") for p in ports)
        peers = rule.get(peers_key)
        if port_ok and (not peers or any(_peer_matches(p, flow, policy["metadata"]["namespace"]) for p in peers)):
            return True
    return False


def network_policy(values: dict) -> dict:
    docs = [d for d in render_chart(values) if d["kind"] == "NetworkPolicy"]
    assert len(docs) == 1
    kubernetes_validate.validate(docs[0], K8S_VERSION, strict=True)
    return docs[0]


def test_network_policy_lets_through_what_the_job_needs_and_nothing_else():
    policy = network_policy({})
    assert policy["spec"]["podSelector"] == {"matchLabels": {"app.kubernetes.io/part-of": "influence-job"}}
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    # every job pod carries the selected label (run, publish, compare)
    for doc in hera_docs(ClusterSettings(nightly={"compare": True})):
        spec = doc["spec"].get("workflowSpec", doc["spec"])
        for t in spec["templates"]:
            if "container" in t:
                assert t["metadata"]["labels"]["app.kubernetes.io/part-of"] == "influence-job", t["name"]
    needed = {
        "dns": ("egress", {"namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}, "port": 53,
                           "protocol": "UDP"}),
        "node-local dns": ("egress", {"ip": "169.254.20.10", "port": 53, "protocol": "UDP"}),
        "kubernetes api": ("egress", {"ip": "10.96.0.1", "port": 443}),
        "rendezvous to another job pod": ("egress", {"namespace": "ml-research", "labels": JOB, "port": 29500}),
        "nccl from another job pod": ("ingress", {"namespace": "ml-research", "labels": JOB, "port": 41523}),
        "prometheus scrape": ("ingress", {"namespace": "monitoring", "labels": {"app": "prometheus"}, "port": 9400}),
    }
    refused = {
        "the internet": ("egress", {"ip": "203.0.113.7", "port": 80}),
        "a database beside the job": ("egress", {"namespace": "ml-research", "labels": {"app": "db"}, "port": 5432}),
        "a pushgateway that is not configured": ("egress", {"namespace": "monitoring", "labels": {}, "port": 9091}),
        "scrape from another namespace": ("ingress", {"namespace": "default", "labels": {}, "port": 9400}),
        "another port from monitoring": ("ingress", {"namespace": "monitoring", "labels": {}, "port": 22}),
        "a pod beside the job": ("ingress", {"namespace": "ml-research", "labels": {"app": "db"}, "port": 9400}),
    }
    for what, (direction, flow) in needed.items():
        assert allowed(policy, direction, flow), what
    for what, (direction, flow) in refused.items():
        assert not allowed(policy, direction, flow), what


def test_network_policy_follows_the_values():
    policy = network_policy({
        "pushgateway": "http://prometheus-pushgateway.metrics:9091", "metricsPort": 9500,
        "artifactRepository": {"configMap": "artifact-repositories"},
        "networkPolicy": {"monitoringNamespace": "obs", "pushgatewayNamespace": "metrics",
                          "apiServerCidrs": ["10.0.0.5/32"], "artifactPorts": [9000],
                          "extraEgress": [{"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}],
                                           "ports": [{"protocol": "TCP", "port": 8443}]}]}})
    assert allowed(policy, "egress", {"namespace": "metrics", "labels": {}, "port": 9091})
    assert allowed(policy, "egress", {"ip": "10.0.0.5", "port": 6443})
    assert not allowed(policy, "egress", {"ip": "10.0.0.6", "port": 6443})  # only the API server's address
    assert allowed(policy, "egress", {"ip": "10.9.9.9", "port": 9000})  # the artifact store (MinIO)
    assert allowed(policy, "egress", {"ip": "10.20.1.1", "port": 8443})
    assert not allowed(policy, "egress", {"ip": "10.21.1.1", "port": 8443})
    assert allowed(policy, "ingress", {"namespace": "obs", "labels": {}, "port": 9500})
    assert not allowed(policy, "ingress", {"namespace": "monitoring", "labels": {}, "port": 9500})
    assert not [d for d in render_chart({"networkPolicy": {"enabled": False}}) if d["kind"] == "NetworkPolicy"]


def test_trace_entrypoint_fans_the_run_template_out_and_gathers_after_all():
    s = ClusterSettings(trace_parallelism=3)
    wt = hera_docs(s)[0]
    templates = {t["name"]: t for t in wt["spec"]["templates"]}
    trace = templates["trace"]
    assert trace["parallelism"] == 3  # a trace never takes more than this many pods of the pool
    (expand,), (step,), (gather,) = trace["steps"]
    assert (expand["template"], step["template"], gather["template"]) == ("expand", "run", "gather")
    assert step["withParam"] == "{{steps.expand.outputs.parameters.steps}}"
    assert step["continueOn"] == {"failed": True, "error": True}  # a failed step stops neither others nor gather
    assert "when" not in gather
    args = {p["name"]: p["value"] for p in step["arguments"]["parameters"]}
    assert args["out"] == "{{item.out}}" and args["model"] == "{{item.model}}"
    assert args["overrides"].endswith("{{inputs.parameters.overrides}}")  # the submitter's words come last
    # the run template is main's: the same retries, sidecar and metrics
    main_run = templates["main"]["steps"][0][0]
    assert main_run["template"] == "run"
    main_args = {p["name"]: p["value"] for p in main_run["arguments"]["parameters"]}
    assert main_args["out"] == "/results/{{workflow.name}}"
    declared = {p["name"] for p in wt["spec"]["arguments"]["parameters"]}
    assert {p["name"] for p in trace["inputs"]["parameters"]} <= declared  # every entrypoint input has a value
    assert {p["globalName"] for p in templates["gather"]["outputs"]["parameters"]} == {
        "trace-steps", "trace-failed", "trace-failed-steps"}


def test_trace_pods_scripts_run_a_trace_end_to_end(tmp_path, tiny_model_dir, tiny_data):
    """The expand, run and gather containers' own scripts under sh, as Argo would run them after substituting the
    parameters (each item of expand's list into the run template's inputs), with a stand-in `torchrun` that runs its
    command in one process: the trace the gather step writes holds every step, a missing batch is named."""
    from conftest import save_tiny_model

    wt = hera_docs(ClusterSettings())[0]
    templates = {t["name"]: t for t in wt["spec"]["templates"]}
    for n in (1, 2):
        save_tiny_model(tmp_path / f"ckpt/{n}", seed=n)
        (tmp_path / f"data-{n}.jsonl").write_bytes(tiny_data.read_bytes())
    (tmp_path / "data-2.jsonl").write_text('{"prompt_id": "a", "prompt": "x", "responses": []}\n')  # a bad batch
    spec = (f"job: {{model: {{dtype: float64}}, compute: {{micro_batch_tokens: 40}}}}\n"
            f"pattern: {{model: '{tmp_path}/ckpt/{{step}}', data: '{tmp_path}/data-{{step}}.jsonl', steps: all}}\n")
    outputs, trace_dir = tmp_path / "outputs", tmp_path / "traces" / "t1"
    (tmp_path / "torchrun").write_text('#!/bin/sh\nshift 3\nexec "$@"\n')  # drop --nproc-per-node N --no-python
    (tmp_path / "torchrun").chmod(0o755)
    path = f"{tmp_path}:{Path(sys.executable).parent}:/usr/bin:/bin"

    def pod(template: dict, params: dict) -> subprocess.CompletedProcess:
        def sub(text: str) -> str:
            for key, value in params.items():
                text = text.replace("{{inputs.parameters.%s}}" % key, value)
            text = text.replace("/results/traces/", f"{tmp_path}/traces/")
            return text.replace("/tmp/outputs", str(outputs)).replace("/tmp/spec.yaml", str(tmp_path / "spec.yaml"))

        env = {e["name"]: sub(e.get("value", "")) for e in template["container"]["env"]}
        env.update(PATH=path, METRICS_LINGER_SECONDS="0", INFLUENCE_PUSHGATEWAY="", HOME=str(tmp_path))
        return subprocess.run(["sh", "-c", sub(template["container"]["command"][2])], env=env, capture_output=True,
                              text=True, cwd=tmp_path)

    base = {"image": "x", "spec": spec, "trace-name": "t1", "gpus": "1", "overrides": "--set compute.device=cpu"}
    assert pod(templates["expand"], base).returncode == 0
    items = json.loads((outputs / "steps").read_text())
    assert [i["step"] for i in items] == ["1", "2"]
    for item in items:  # the fan-out: each item's values become the run template's inputs
        overrides = item["overrides"] + " " + base["overrides"]
        done = pod(templates["run"], {**base, **item, "overrides": overrides})
        assert done.returncode == (0 if item["step"] == "1" else 2), done.stderr[-2000:]
    gather = pod(templates["gather"], base)
    assert gather.returncode == 1, gather.stderr[-2000:]  # a failed step fails the workflow, after the trace is written
    trace = json.loads((trace_dir / "trace" / "trace.json").read_text())
    assert [(s["step"], s["status"]) for s in trace["steps"]] == [(1, "gathered"), (2, "failed")]
    assert [(outputs / n).read_text() for n in ("steps", "failed", "failed-steps")] == ["2", "1", "2"]
    assert json.loads((trace_dir / "steps" / "1" / "results.json").read_text())["model"]
