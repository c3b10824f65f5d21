"""Checks before the operator process starts, each failing with one line saying what to fix.

Called by `service.run_service` (`synthpref operator run`) before it serves anything or starts
kopf: the Kubernetes credentials load (in a cluster, else a kubeconfig), the API server answers,
and the PreferenceRun CRD is installed (asked through API discovery, which every authenticated
client may read, so the operator needs no RBAC on CRDs). Without these, kopf would start and
log tracebacks, or watch nothing.
"""

from __future__ import annotations

from typing import Any

from synthpref.errors import SynthprefError
from synthpref.spec import API_GROUP, API_VERSION
from synthpref_operator.crd import CRD_PATH, PLURAL


class OperatorStartError(SynthprefError, RuntimeError):
    """The operator cannot start; the message says why and what to do."""


def api_client(kubeconfig: str | None) -> Any:
    """The client the handlers use, or an error naming where credentials are looked for."""
    from kubernetes.config import ConfigException

    from synthpref_operator.handlers import api_client_for

    try:
        return api_client_for(kubeconfig)
    except (ConfigException, OSError) as error:
        where = f"--kubeconfig {kubeconfig}" if kubeconfig else "$KUBECONFIG or ~/.kube/config"
        raise OperatorStartError(
            f"no Kubernetes credentials: not running in a cluster, and no usable kubeconfig "
            f"({where}: {error}); pass --kubeconfig PATH or set KUBECONFIG "
            "(for the dev cluster: eval $(synthpref dev cluster env))"
        ) from None


def check_crd(api_client: Any) -> None:
    """The API server answers and serves preferenceruns.synthpref.dev/v1alpha1."""
    from kubernetes.client import ApiException, CustomObjectsApi

    host = api_client.configuration.host
    path = f"/apis/{API_GROUP}/{API_VERSION}"
    try:
        reply = CustomObjectsApi(api_client).get_api_resources(API_GROUP, API_VERSION)
    except ApiException as error:
        if error.status == 404:
            raise OperatorStartError(
                f"the PreferenceRun CRD is not installed in the cluster at {host} "
                f"({path}: 404); install it: kubectl apply -f {CRD_PATH} (helm install "
                "installs it with the chart)"
            ) from None
        raise OperatorStartError(
            f"the API server at {host} refused discovery of {path} (HTTP {error.status}); "
            "check the operator's credentials"
        ) from None
    except Exception as error:  # connection refused, TLS, DNS
        raise OperatorStartError(
            f"cannot reach the API server at {host} ({type(error).__name__}: {error}); is the "
            "cluster running and the kubeconfig's server right?"
        ) from None
    resources = {r.name for r in reply.resources or []}
    if PLURAL not in resources:
        raise OperatorStartError(
            f"{path} at {host} serves no {PLURAL}; install the CRD: kubectl apply -f {CRD_PATH}"
        )


def preflight(kubeconfig: str | None) -> None:
    """Every check, in order; raises `OperatorStartError` at the first that fails."""
    client = api_client(kubeconfig)
    try:
        check_crd(client)
    finally:
        client.close()
