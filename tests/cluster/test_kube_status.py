"""The `kubernetes` client's uses — publish's status (ConfigMap + Workflow labels) and `influence-job preflight`
— exercised with the real client against tests/kube_standin.py, a local HTTP server that STANDS IN FOR THE
KUBERNETES API SERVER (none can run on these machines). The stand-in enforces the RBAC rules the chart
renders, so these tests also show that the chart's Roles allow exactly what the code does."""

from __future__ import annotations

import copy
import json

import pytest
from conftest import exact_config
from kube_standin import KubeStandIn
from test_cluster import render_chart

from influence_job.cli.main import main
from influence_job.run.pipeline import run_job

NS = "ml"
WF = "influence-diagnostic-x7k2p"


def chart_rules(kind: str, name: str) -> list[dict]:
    doc = next(d for d in render_chart({}, namespace=NS) if d["kind"] == kind and d["metadata"]["name"] == name)
    return doc["rules"]


PUBLISHER = chart_rules("Role", "influence-job-publisher-status")
SUBMITTER = chart_rules("Role", "influence-job-submitter") + chart_rules("ClusterRole", f"influence-job-preflight-{NS}")


@pytest.fixture(scope="module")
def results_dirs(tiny_model_dir, tiny_data, tmp_path_factory):
    """A passing and a failing (projection_fidelity) result, written by the engine."""
    base = tmp_path_factory.mktemp("publish")
    run_job(exact_config(tiny_model_dir, tiny_data, out=base / "pass"))
    run_job(exact_config(tiny_model_dir, tiny_data, out=base / "fail", projection={"factor": 4},
                         validation={"fidelity_sigma": 1e-12}))
    return base


def workflow(name: str = WF) -> dict:
    return {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
            "metadata": {"name": name, "namespace": NS, "uid": "0f3c-wf-uid",
                         "labels": {"workflows.argoproj.io/phase": "Running"}},
            "spec": {"workflowTemplateRef": {"name": "influence-diagnostic"}}}


def publish(api: KubeStandIn, results, tmp_path, status="Succeeded", code="0") -> int:
    return main(["publish", "--results", str(results), "--out", str(tmp_path / "out"), "--run-status", status,
                 "--run-exit-code", code, "--workflow", WF, "--workflow-uid", "0f3c-wf-uid", "--namespace", NS,
                 "--results-claim", "influence-results", "--kubeconfig", str(api.kubeconfig(tmp_path / "kc"))])


def labelled(api: KubeStandIn, selector: str, tmp_path) -> list[str]:
    """What `kubectl get wf -l SELECTOR` lists, through the real client's list call."""
    from kubernetes import client

    from influence_job.cluster.kube import api_client

    kubeconfig = str(api.kubeconfig(tmp_path / "kc"))
    items = client.CustomObjectsApi(api_client(kubeconfig)).list_namespaced_custom_object(
        "argoproj.io", "v1alpha1", NS, "workflows", label_selector=selector)["items"]
    return [w["metadata"]["name"] for w in items]


def test_publish_writes_the_results_configmap_and_labels_the_workflow(results_dirs, tmp_path, capsys):
    with KubeStandIn(PUBLISHER + [{"apiGroups": ["argoproj.io"], "resources": ["workflows"], "verbs": ["list"]}]) \
            as api:
        api.add("argoproj.io", "workflows", workflow())
        assert publish(api, results_dirs / "pass", tmp_path) == 0, capsys.readouterr()
        cm = api.get("", NS, "configmaps", f"{WF}-results")
        assert cm["metadata"]["ownerReferences"] == [{"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
                                                      "name": WF, "uid": "0f3c-wf-uid"}]
        r = json.loads((results_dirs / "pass" / "results.json").read_text())
        data = cm["data"]
        assert data["validation"] == "passed" and data["failed-checks"] == ""
        assert data["rows-emitted"] == str(r["validation"]["rows_emitted"])
        assert data["results"] == f"pvc/influence-results:{results_dirs / 'pass'}"
        assert "## HINV" in data["report.md"] and "## Validation" in data["report.md"]
        wf = api.get("argoproj.io", NS, "workflows", WF)
        assert wf["metadata"]["labels"] == {"workflows.argoproj.io/phase": "Running",  # Argo's own label stays
                                            "influence-job/validation": "passed",
                                            "influence-job/rows-emitted": str(r["validation"]["rows_emitted"])}
        patch = next(q for q in api.requests if q["method"] == "PATCH")
        assert patch["content_type"] == "application/merge-patch+json"
        assert labelled(api, "influence-job/validation=failed", tmp_path) == []

        # A retried publish (the ConfigMap exists) on a run whose validation failed replaces the verdict.
        assert publish(api, results_dirs / "fail", tmp_path) == 1
        assert [q["method"] for q in api.requests if "configmaps" in q["path"]][-2:] == ["POST", "PUT"]
        cm = api.get("", NS, "configmaps", f"{WF}-results")
        assert cm["data"]["validation"] == "failed" and cm["data"]["failed-checks"] == "projection_fidelity"
        assert labelled(api, "influence-job/validation=failed", tmp_path) == [WF]
        wf = api.get("argoproj.io", NS, "workflows", WF)
        assert wf["metadata"]["annotations"]["influence-job/failed-checks"] == "projection_fidelity"


def test_a_failed_run_is_labelled_failed_despite_a_passing_stale_result(results_dirs, tmp_path):
    with KubeStandIn(PUBLISHER) as api:
        api.add("argoproj.io", "workflows", workflow())
        assert publish(api, results_dirs / "pass", tmp_path, status="Failed", code="137") == 1
        cm = api.get("", NS, "configmaps", f"{WF}-results")
        assert cm["data"]["validation"] == "failed" and cm["data"]["failed-checks"] == "run-step-failed"
        labels = api.get("argoproj.io", NS, "workflows", WF)["metadata"]["labels"]
        assert labels["influence-job/validation"] == "failed" and "influence-job/rows-emitted" not in labels


@pytest.mark.parametrize("rule,verb", [(r, v) for r in range(len(PUBLISHER)) for v in PUBLISHER[r]["verbs"]])
def test_the_publisher_role_is_the_smallest_that_works(results_dirs, tmp_path, capsys, rule, verb):
    """Every verb of the chart's publisher Role is needed: without it, a first or a retried publish is refused,
    and publish says so in one line (exit 2) instead of passing without a status."""
    rules = copy.deepcopy(PUBLISHER)
    rules[rule]["verbs"].remove(verb)
    with KubeStandIn(rules) as api:
        api.add("argoproj.io", "workflows", workflow())
        codes = [publish(api, results_dirs / "pass", tmp_path) for _ in range(2)]  # the second: a retry
    assert 2 in codes
    err = capsys.readouterr().err
    assert "forbidden (403)" in err and "Role <publisherServiceAccount>-status" in err
    assert "Traceback" not in err


def test_publish_without_the_workflow_names_its_missing_arguments(results_dirs, tmp_path, capsys):
    code = main(["publish", "--results", str(results_dirs / "pass"), "--out", str(tmp_path / "o"),
                 "--workflow", WF])
    assert code == 2 and "--workflow-uid and --namespace" in capsys.readouterr().err


# ---- preflight ---------------------------------------------------------------------------------------------------

def ready_cluster(api: KubeStandIn, gpus: int = 8) -> None:
    api.add("argoproj.io", "workflowtemplates", {"apiVersion": "argoproj.io/v1alpha1", "kind": "WorkflowTemplate",
                                                "metadata": {"name": "influence-diagnostic", "namespace": NS}})
    for claim in ("influence-data", "influence-results"):
        api.add("", "persistentvolumeclaims", {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                               "metadata": {"name": claim, "namespace": NS},
                                               "spec": {"storageClassName": "fast"}, "status": {"phase": "Bound"}})
    api.add("", "secrets", {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
                            "metadata": {"name": "influence-job-submitter.service-account-token", "namespace": NS},
                            "data": {"token": "dG9rZW4="}})
    for name, product, count, cordoned in (("gpu-a", "NVIDIA-H200", gpus, False), ("gpu-b", "NVIDIA-H200", 8, True),
                                           ("gpu-c", "NVIDIA-H100-80GB-HBM3", 8, False)):
        api.add("", "nodes", {"apiVersion": "v1", "kind": "Node",
                              "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": product}},
                              "spec": {"unschedulable": cordoned},
                              "status": {"allocatable": {"nvidia.com/gpu": str(count), "cpu": "96"}}})
    api.add("storage.k8s.io", "storageclasses", {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                                                 "metadata": {"name": "fast"}, "provisioner": "csi.example",
                                                 "volumeBindingMode": "Immediate"})


def preflight(api: KubeStandIn, tmp_path, *extra) -> int:
    return main(["preflight", "--namespace", NS, "--kubeconfig", str(api.kubeconfig(tmp_path / "kc")), *extra])


def test_preflight_passes_on_a_ready_cluster_with_the_submitter_roles(tmp_path, capsys):
    with KubeStandIn(SUBMITTER) as api:
        ready_cluster(api)
        assert preflight(api, tmp_path) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out] == ["ok   template", "ok   data volume", "ok   results volume",
                                                    "ok   argo token", "ok   gpus"]
    assert "1 node(s) have 8 allocatable nvidia.com/gpu of NVIDIA-H200 (gpu-a)" in out[-1]


def _drop(api, group, resource, name, namespace=NS):
    del api.objects[(group, namespace, resource, name)]


MISSING = {
    "template": (lambda api: _drop(api, "argoproj.io", "workflowtemplates", "influence-diagnostic"),
                 "FAIL template: WorkflowTemplate influence-diagnostic is not installed in namespace ml; install the "
                 "chart there"),
    "data claim": (lambda api: _drop(api, "", "persistentvolumeclaims", "influence-data"),
                   "FAIL data volume: PersistentVolumeClaim influence-data does not exist in namespace ml"),
    "results pending": (lambda api: api.get("", NS, "persistentvolumeclaims", "influence-results")
                        .update(status={"phase": "Pending"}),
                        "FAIL results volume: PersistentVolumeClaim influence-results is Pending, not Bound; see why "
                        "with kubectl -n ml describe pvc influence-results"),
    "secret": (lambda api: _drop(api, "", "secrets", "influence-job-submitter.service-account-token"),
               "FAIL argo token: Secret influence-job-submitter.service-account-token does not exist"),
    "empty secret": (lambda api: api.get("", NS, "secrets", "influence-job-submitter.service-account-token")
                     .update(data={}), "FAIL argo token: Secret influence-job-submitter.service-account-token holds "
                     "no token yet"),
    "too few gpus": (lambda api: api.get("", None, "nodes", "gpu-a")["status"].update(allocatable={"nvidia.com/gpu":
                                                                                                  "4"}),
                     "FAIL gpus: no schedulable node has 8 allocatable nvidia.com/gpu of NVIDIA-H200 (gpu-a: 4, "
                     "gpu-b: 8 (cordoned)); lower gpus"),
    "other product": (lambda api: [_drop(api, "", "nodes", n, None) for n in ("gpu-a", "gpu-b")],
                      "FAIL gpus: no node has the label nvidia.com/gpu.product=NVIDIA-H200 (products present: "
                      "NVIDIA-H100-80GB-HBM3); set gpuProduct"),
}


@pytest.mark.parametrize("missing", MISSING)
def test_preflight_reports_each_missing_piece_in_one_line_with_the_fix(tmp_path, capsys, missing):
    breaks, line = MISSING[missing]
    with KubeStandIn(SUBMITTER) as api:
        ready_cluster(api)
        breaks(api)
        assert preflight(api, tmp_path) == 2
    out, err = capsys.readouterr()
    assert [x for x in out.splitlines() if x.startswith("FAIL")] == [next(x for x in out.splitlines()
                                                                          if x.startswith(line))]
    assert out.count("ok  ") == 4
    assert "preflight: 1 check(s) failed" in err


def test_preflight_accepts_a_pending_claim_that_binds_on_first_use(tmp_path, capsys):
    with KubeStandIn(SUBMITTER) as api:
        ready_cluster(api)
        api.get("storage.k8s.io", None, "storageclasses", "fast")["volumeBindingMode"] = "WaitForFirstConsumer"
        api.get("", NS, "persistentvolumeclaims", "influence-results")["status"]["phase"] = "Pending"
        assert preflight(api, tmp_path) == 0
    assert "pending until its first pod (StorageClass fast binds on first use)" in capsys.readouterr().out


def test_preflight_says_what_it_may_not_read_and_which_role_allows_it(tmp_path, capsys):
    with KubeStandIn(chart_rules("Role", "influence-job-submitter")) as api:  # no ClusterRole: nodes forbidden
        ready_cluster(api)
        assert preflight(api, tmp_path) == 2
    err = capsys.readouterr().err
    assert "cannot list nodes with nvidia.com/gpu.product=NVIDIA-H200: forbidden (403)" in err
    assert "ClusterRole influence-job-preflight" in err and "Traceback" not in err


def test_preflight_without_credentials_says_how_to_give_them(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert main(["preflight", "--namespace", NS]) == 2
    assert "no Kubernetes credentials: the kubeconfig" in capsys.readouterr().err


def test_a_broken_kubeconfig_or_an_unreachable_server_is_one_line(tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.write_text("apiVersion: v1\nclusters: [\n")
    assert main(["preflight", "--kubeconfig", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "is not valid YAML" in err and "Traceback" not in err
    with KubeStandIn(SUBMITTER) as api:
        kubeconfig = api.kubeconfig(tmp_path / "kc")
    # The stand-in has stopped: nothing listens at its address any more.
    assert main(["preflight", "--kubeconfig", str(kubeconfig)]) == 2
    err = capsys.readouterr().err
    assert "the Kubernetes API is unreachable" in err and "Connection refused)" in err and "Traceback" not in err
