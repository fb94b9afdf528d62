"""A local HTTP server that STANDS IN FOR THE KUBERNETES API SERVER: no API server can run on these machines.

It serves the JSON of the calls the project makes through the official `kubernetes` client (get, list with
label and field selectors, create, replace, JSON merge patch) over an in-memory object store, and checks each
request as the real server would where it matters here:
- the bearer token, then RBAC: each request's (API group, resource, verb, name) must be allowed by the rules
  the test grants (the chart's Roles), else 403 with a Status body;
- create/replace bodies of core kinds pass kubernetes-validate (strict), names and namespaces must agree with
  the path, an existing name on create is 409;
- a PATCH must be a JSON merge patch.
Every request is recorded (method, path, query, content type, body) for the tests' own checks.
"""

from __future__ import annotations

import copy
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import kubernetes_validate
import yaml

K8S_VERSION = "1.33.0"
TOKEN = "kube-test-token"
CLUSTER_SCOPED = {"nodes", "storageclasses"}
KINDS = {"configmaps": "ConfigMap", "persistentvolumeclaims": "PersistentVolumeClaim", "secrets": "Secret",
         "pods": "Pod", "events": "Event", "nodes": "Node", "storageclasses": "StorageClass",
         "workflows": "Workflow", "workflowtemplates": "WorkflowTemplate"}


def parse(path: str) -> tuple[str, str | None, str, str | None]:
    """(API group, namespace, resource, name) of a request path."""
    parts = path.strip("/").split("/")
    if parts[0] == "api":  # core: /api/v1/...
        group, rest = "", parts[2:]
    else:  # /apis/{group}/{version}/...
        group, rest = parts[1], parts[3:]
    namespace = None
    if rest and rest[0] == "namespaces" and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    return group, namespace, rest[0], rest[1] if len(rest) > 1 else None


def allowed(rules: list[dict], group: str, resource: str, verb: str, name: str | None) -> bool:
    for rule in rules:
        if group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]:
            names = rule.get("resourceNames")
            if not names or (name is not None and name in names):
                return True
    return False


def matches(obj: dict, query: dict) -> bool:
    for selector in query.get("labelSelector", []):
        labels = obj.get("metadata", {}).get("labels") or {}
        for term in selector.split(","):
            key, _, value = term.partition("=")
            if labels.get(key) != value:
                return False
    for selector in query.get("fieldSelector", []):
        for term in selector.split(","):
            key, _, value = term.partition("=")
            node = obj
            for part in key.split("."):
                node = node.get(part, {}) if isinstance(node, dict) else {}
            if node != value:
                return False
    return True


def merge_patch(target, patch):
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


class KubeStandIn:
    """The server, its objects and what it received. ``rules`` are the RBAC rules the token holds."""

    def __init__(self, rules: list[dict]):
        self.rules = rules
        self.objects: dict[tuple[str, str | None, str, str], dict] = {}
        self.requests: list[dict] = []
        self.fail_next: list[int] = []  # statuses to answer the next requests with (transient failures)
        handler = type("Handler", (_Handler,), {"standin": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, group: str, resource: str, obj: dict) -> dict:
        meta = obj["metadata"]
        meta.setdefault("uid", f"uid-{meta['name']}")
        meta.setdefault("resourceVersion", "1")
        self.objects[(group, meta.get("namespace"), resource, meta["name"])] = obj
        return obj

    def get(self, group: str, namespace: str | None, resource: str, name: str) -> dict | None:
        return self.objects.get((group, namespace, resource, name))

    def kubeconfig(self, path: Path, token: str = TOKEN) -> Path:
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "standin",
            "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": token}}],
            "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "tester"}}],
        }))
        return path

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


class JsonHandler(BaseHTTPRequestHandler):
    """A quiet request handler that answers JSON (shared by the stand-ins for the Kubernetes and Argo servers)."""

    def log_message(self, *args):
        pass

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _Handler(JsonHandler):
    standin: KubeStandIn

    def _status(self, code: int, reason: str, message: str) -> None:
        self._reply(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
                           "message": message, "code": code})

    def _handle(self, method: str) -> None:
        s = self.standin
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        group, namespace, resource, name = parse(url.path)
        s.requests.append({"method": method, "path": url.path, "query": query, "body": body,
                           "content_type": self.headers.get("Content-Type")})
        if s.fail_next:
            return self._status(s.fail_next.pop(0), "ServiceUnavailable", "the stand-in fails this request")
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._status(401, "Unauthorized", "Unauthorized")
        verb = {"GET": "get" if name else "list", "POST": "create", "PUT": "update", "PATCH": "patch"}[method]
        if not allowed(s.rules, group, resource, verb, name):
            return self._status(403, "Forbidden", f'{resource} "{name or ""}" is forbidden: cannot {verb} '
                                f'resource "{resource}" in API group "{group}" in the namespace "{namespace}"')
        key = (group, namespace, resource, name)
        if verb == "get":
            obj = s.objects.get(key)
            return self._reply(200, obj) if obj else self._status(404, "NotFound", f'{resource} "{name}" not found')
        if verb == "list":
            items = [o for (g, ns, r, _), o in s.objects.items()
                     if g == group and r == resource and (namespace is None or ns == namespace) and matches(o, query)]
            return self._reply(200, {"kind": KINDS[resource] + "List", "apiVersion": "v1", "metadata": {},
                                     "items": items})
        if verb == "patch":
            if self.headers.get("Content-Type") != "application/merge-patch+json":
                return self._status(415, "UnsupportedMediaType", f"not a merge patch: {self.headers['Content-Type']}")
            if key not in s.objects:
                return self._status(404, "NotFound", f'{resource} "{name}" not found')
            s.objects[key] = merge_patch(s.objects[key], body)
            return self._reply(200, s.objects[key])
        meta = body.get("metadata", {})
        if meta.get("namespace") not in (None, namespace):
            return self._status(400, "BadRequest", "the namespace of the object does not match the request's")
        if group == "":
            try:
                kubernetes_validate.validate(body, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                return self._status(422, "Invalid", f"kubernetes-validate: {exc}")
        if verb == "create":
            key = (group, namespace, resource, meta["name"])
            if key in s.objects:
                return self._status(409, "AlreadyExists", f'{resource} "{meta["name"]}" already exists')
        elif key not in s.objects or meta.get("name") != name:
            return self._status(404, "NotFound", f'{resource} "{name}" not found')
        stored = copy.deepcopy(body)
        stored["metadata"] = {**meta, "namespace": namespace, "uid": f"uid-{meta['name']}", "resourceVersion": "2"}
        s.objects[key] = stored
        return self._reply(201 if verb == "create" else 200, stored)

    def do_GET(self):  # noqa: N802
        self._handle("GET")

    def do_POST(self):  # noqa: N802
        self._handle("POST")

    def do_PUT(self):  # noqa: N802
        self._handle("PUT")

    def do_PATCH(self):  # noqa: N802
        self._handle("PATCH")
