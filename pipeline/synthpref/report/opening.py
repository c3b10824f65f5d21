"""`synthpref report open`: a finished run's report, brought to where a browser can show it.

The report lives in the run's storage (`report/index.html`, one self-contained page, beside
`report/report.json` and `report/warnings.json`). On a cluster its `status.result.reportUri` is
an `s3://` URI, which no browser opens. So, given the run (its RUN.yaml, or its name on the
cluster the current kubeconfig reaches), this either copies the report's objects into a local
folder (`fetch`) or gives a presigned HTTPS link to the page (`presigned_link`, S3 only). The
run's storage is opened with the caller's own credentials (AWS_* variables, profiles), as
`aws s3 cp` would: nothing is read from the cluster but the PreferenceRun itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthpref import layout
from synthpref.errors import InputsNotReadyError, SynthprefError
from synthpref.spec import API_GROUP, API_VERSION, PreferenceRunManifest, SpecError, parse_manifest
from synthpref.storage import LocalStorage, S3Storage, Storage, open_storage

PLURAL = "preferenceruns"  # the PreferenceRun resource (the operator's CRD)
REPORT_PREFIX = "report/"
DEFAULT_EXPIRES_SECONDS = 3600


class ReportOpenError(SynthprefError):
    """The report cannot be opened: no such run, no report yet, no credentials."""


@dataclass(frozen=True)
class RunReport:
    """Where one run's report is: the run's name and its storage."""

    run: str
    storage: Storage

    @property
    def uri(self) -> str:
        return self.storage.url(layout.REPORT_HTML)


def from_manifest(manifest: PreferenceRunManifest) -> RunReport:
    """The report of the run a RUN.yaml describes (its spec.storage); it must exist."""
    settings = manifest.spec.storage
    storage = open_storage(settings.uri, settings.endpoint_url, settings.region)
    report = RunReport(manifest.metadata.name, storage)
    if not storage.exists(layout.REPORT_HTML):
        raise InputsNotReadyError(
            f"{report.uri}: not found: run {manifest.metadata.name} has no report yet (it is "
            "written when the run's parse stage ends; `synthpref report RUN.yaml` writes it "
            "again for a finished run)"
        )
    return report


def from_cluster(name: str, namespace: str | None, kubeconfig: str | None) -> RunReport:
    """The report of the PreferenceRun `namespace/name` on the cluster (its
    status.result.reportUri, in its spec.storage)."""
    run, namespace = read_run(name, namespace, kubeconfig)
    where = f"PreferenceRun {namespace}/{name}"
    status = run.get("status") or {}
    result = status.get("result") or {}
    if not result.get("reportUri"):
        phase = status.get("phase") or "Pending"
        why = (
            f"its report failed: {result['reportError']}"
            if result.get("reportError")
            else "the report is written when its parse stage ends"
        )
        raise InputsNotReadyError(f"{where} has no report yet (phase {phase}; {why})")
    try:
        manifest = parse_manifest(
            {k: run.get(k) for k in ("apiVersion", "kind", "metadata", "spec")}, where
        )
    except SpecError as error:
        raise ReportOpenError(str(error)) from None
    settings = manifest.spec.storage
    storage = open_storage(settings.uri, settings.endpoint_url, settings.region)
    report = RunReport(name, storage)
    if report.uri != result["reportUri"]:  # the run says so; trust what it says
        raise ReportOpenError(
            f"{where}: status.result.reportUri {result['reportUri']} is not under its "
            f"spec.storage.uri {settings.uri}"
        )
    return report


def read_run(
    name: str, namespace: str | None, kubeconfig: str | None
) -> tuple[dict[str, Any], str]:
    """The PreferenceRun object and its namespace (default: the kubeconfig context's, else
    "default"), read with the current kubeconfig."""
    from kubernetes import client, config

    new_client: Any = config.new_client_from_config  # untyped
    contexts: Any = config.list_kube_config_contexts
    try:
        api_client = new_client(config_file=kubeconfig)
        if namespace is None:
            _, active = contexts(config_file=kubeconfig)
            namespace = str((active or {}).get("context", {}).get("namespace") or "default")
    except (config.ConfigException, OSError) as error:
        raise ReportOpenError(
            f"no Kubernetes credentials to look up PreferenceRun {name} ({error}); set "
            "KUBECONFIG or pass --kubeconfig, or give the run's RUN.yaml instead"
        ) from None
    api: Any = client.CustomObjectsApi(api_client)
    try:
        run: dict[str, Any] = api.get_namespaced_custom_object(
            API_GROUP, API_VERSION, namespace, PLURAL, name
        )
    except client.ApiException as error:
        if error.status == 404:
            raise ReportOpenError(
                f"no PreferenceRun {name} in namespace {namespace} (`kubectl get prun -n "
                f"{namespace}` lists them; pass --namespace for another)"
            ) from None
        raise ReportOpenError(
            f"cannot read PreferenceRun {namespace}/{name}: HTTP {error.status} {error.reason}"
        ) from None
    except OSError as error:
        raise ReportOpenError(
            f"cannot reach the Kubernetes API server to read PreferenceRun {name}: {error}"
        ) from None
    finally:
        api_client.close()
    return run, namespace


def fetch(report: RunReport, folder: Path) -> Path:
    """Copy every object under the run's `report/` into `folder`; returns the page's path."""
    keys = report.storage.list(REPORT_PREFIX)
    for key in keys:
        target = folder / key.removeprefix(REPORT_PREFIX)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(report.storage.read_bytes(key))
    return folder / layout.REPORT_HTML.removeprefix(REPORT_PREFIX)


def local_page(report: RunReport) -> Path | None:
    """The page's own path when the run's storage is a local folder (nothing to fetch)."""
    if isinstance(report.storage, LocalStorage):
        return report.storage.root / layout.REPORT_HTML
    return None


def presigned_link(report: RunReport, expires_seconds: int = DEFAULT_EXPIRES_SECONDS) -> str:
    """An HTTPS link to the page that works without credentials for `expires_seconds`."""
    if not isinstance(report.storage, S3Storage):
        raise ReportOpenError(
            f"{report.uri}: a presigned link needs S3 storage; this report is a local file"
        )
    return report.storage.presigned_url(
        layout.REPORT_HTML, expires_seconds, content_type="text/html; charset=utf-8"
    )
