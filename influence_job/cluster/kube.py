"""The official `kubernetes` client, configured the way a user expects: in a pod, the pod's service account;
elsewhere, a kubeconfig (``--kubeconfig``/``--context``, else $KUBECONFIG or ~/.kube/config). API failures become
one line that says what was refused and what to do."""

from __future__ import annotations

import os

from influence_job.base.errors import InputError


def api_client(kubeconfig: str | None = None, context: str | None = None):
    """An ApiClient for the cluster. An explicit kubeconfig wins over the in-cluster account."""
    from kubernetes import client, config

    if kubeconfig is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        try:
            config.load_incluster_config()
        except config.ConfigException as exc:
            raise InputError(f"in-cluster Kubernetes credentials are unusable: {exc}. The step's service account "
                             "token must be mounted (automountServiceAccountToken).") from None
        return client.ApiClient()
    import yaml

    configuration = client.Configuration()
    where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
    fix = "Pass --kubeconfig FILE (and --context NAME), or run inside the cluster."
    if ":" not in where and not os.path.exists(os.path.expanduser(where)):
        raise InputError(f"no Kubernetes credentials: the kubeconfig {where} was not found. {fix}")
    try:
        config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
    except (config.ConfigException, OSError, yaml.YAMLError, TypeError, KeyError, ValueError) as exc:
        detail = str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip() else type(exc).__name__
        if isinstance(exc, yaml.YAMLError):
            detail = f"it is not valid YAML ({detail})"
        raise InputError(f"no usable Kubernetes credentials in {where}: {detail}. {fix}") from None
    return client.ApiClient(configuration)


def explain_api_error(exc: Exception, action: str, fix_403: str) -> InputError:
    """One line for a failed API call: ``action`` says what was attempted (e.g. "create ConfigMap x in ns")."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    if isinstance(exc, ApiException):
        if exc.status == 401:
            return InputError(f"cannot {action}: the Kubernetes API rejected the credentials (401). Renew the "
                              "token or the kubeconfig's user.")
        if exc.status == 403:
            return InputError(f"cannot {action}: forbidden (403). {fix_403}")
        return InputError(f"cannot {action}: the Kubernetes API answered {exc.status} {exc.reason}: "
                          f"{_message(exc)}")
    if isinstance(exc, HTTPError):
        reason = getattr(exc, "reason", None) or exc  # MaxRetryError carries the underlying failure
        return InputError(f"cannot {action}: the Kubernetes API is unreachable ({type(reason).__name__}: "
                          f"{_short(reason)}). Check the kubeconfig's server and the network to it.")
    raise exc


def _short(exc) -> str:
    """The last clause of a urllib3 error ("...: [Errno 111] Connection refused"), whole."""
    text = str(exc)
    return text.rsplit(": ", 1)[-1].strip(" ')\"") if ": " in text else text


def _message(exc) -> str:
    """The Status object's message when the body is one (the API server's own explanation)."""
    import json

    try:
        return json.loads(exc.body).get("message") or exc.body
    except (TypeError, ValueError, AttributeError):
        return str(exc.body)[:300]


def api_errors() -> tuple[type[Exception], ...]:
    """The exceptions a call through the client raises for API or transport failures."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    return (ApiException, HTTPError)
