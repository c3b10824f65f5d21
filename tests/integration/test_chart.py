"""The Helm chart (charts/synthpref) against helm and the real API server: it lints, renders what
the values ask for (flags, env, probes, security), its manifests pass server-side validation,
wrong values fail with the schema's message naming the field, its RBAC grants exactly the
operator's API calls (checked with `kubectl auth can-i` as the ServiceAccount), and uninstall
removes everything but the CRD. Every install uses replicaCount=0: no operator pod runs here."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from synthpref.spec import Toleration
from synthpref_operator.cli import run_command
from synthpref_operator.crd import CHART_CRD_PATH, CRD_NAME, catalog_crd
from synthpref_operator.settings import OperatorSettings, parse_settings

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

Kubectl = Callable[..., subprocess.CompletedProcess[str]]
Helm = Callable[..., subprocess.CompletedProcess[str]]
ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "synthpref"
RUNS = "preferenceruns.synthpref.dev"
CATALOGS = "modelcatalogs.synthpref.dev"
JOBS = "jobs.batch"
LEASES = "leases.coordination.k8s.io"
NO_POD = ("--set", "replicaCount=0")

# The operator's API calls (INTERFACE.md), as RBAC rules: (apiGroup, resource) -> verbs.
NAMESPACED_RULES = {
    ("synthpref.dev", "preferenceruns"): {"get", "list", "watch", "patch"},
    ("synthpref.dev", "preferenceruns/status"): {"get", "update", "patch"},
    ("synthpref.dev", "modelcatalogs"): {"get", "list", "watch"},
    ("batch", "jobs"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "pods"): {"get", "list"},
    ("", "events"): {"create"},
    ("", "secrets"): {"get"},
}


def release_name(stem: str) -> str:
    return f"{stem}-{uuid.uuid4().hex[:6]}"


def render(helm: Helm, namespace: str, *args: str, release: str = "rel") -> list[dict[str, Any]]:
    """`helm template` parsed into its documents."""
    result = helm("template", release, str(CHART), "-n", namespace, *args, check=False)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def find(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = find(docs, "Deployment")
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(c)


def rules_of(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def install_crd(kubectl: Kubectl) -> None:
    """The chart's CRDs (PreferenceRun, ModelCatalog), as `helm install` would create them."""
    result = kubectl(
        "apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"), check=False
    )
    assert result.returncode == 0, result.stderr
    for name in (CRD_NAME, CATALOGS):
        kubectl("wait", "--for=condition=Established", "--timeout=300s", f"crd/{name}")


@pytest.fixture
def crd(kubectl: Kubectl) -> None:
    install_crd(kubectl)


@pytest.fixture
def make_namespace(k8s_api_client: Any, namespace: str) -> Iterator[Callable[[str], str]]:
    """Creates `<test namespace>-<suffix>` namespaces, deleted after the test."""
    core = client.CoreV1Api(k8s_api_client)
    made: list[str] = []

    def make(suffix: str) -> str:
        name = f"{namespace}-{suffix}"
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        made.append(name)
        return name

    yield make
    for name in made:
        try:
            core.delete_namespace(name, propagation_policy="Background")
        except client.ApiException as e:
            if e.status != 404:
                raise


def can_i(
    kubectl: Kubectl,
    account: str,
    verb: str,
    resource: str,
    namespace: str,
    subresource: str | None = None,
) -> bool:
    """`kubectl auth can-i` as `account` (system:serviceaccount:NS:NAME)."""
    args = ["auth", "can-i", verb, resource, "-n", namespace, f"--as={account}"]
    if subresource:
        args.append(f"--subresource={subresource}")
    result = kubectl(*args, check=False)
    answer = result.stdout.strip()
    assert answer in {"yes", "no"}, (args, result.stdout, result.stderr)
    assert "doesn't have a resource type" not in result.stderr, result.stderr
    return answer == "yes"


Check = tuple[str, str, str | None]  # verb, resource (optionally resource/name), subresource

RUN_CALLS: list[Check] = [
    *[(v, RUNS, None) for v in ("get", "list", "watch", "patch")],
    *[(v, RUNS, "status") for v in ("get", "update", "patch")],
    *[(v, CATALOGS, None) for v in ("get", "list", "watch")],
    *[(v, JOBS, None) for v in ("get", "list", "watch", "create", "patch", "delete")],
    ("get", "pods", None),
    ("list", "pods", None),
    ("create", "events", None),
    ("get", "secrets", None),
]
FORBIDDEN: list[Check] = [
    ("delete", "secrets", None),
    ("list", "secrets", None),
    ("watch", "secrets", None),
    ("create", "secrets", None),
    ("deletecollection", JOBS, None),
    ("update", JOBS, None),
    ("create", "pods", None),
    ("delete", "pods", None),
    ("create", RUNS, None),
    ("update", RUNS, None),
    ("delete", RUNS, None),
    ("create", CATALOGS, None),
    ("patch", CATALOGS, None),
    ("get", "configmaps", None),
    ("create", "deployments.apps", None),
    ("delete", LEASES, None),
    ("list", LEASES, None),
    ("create", LEASES, None),  # the chart creates the Lease
    ("get", f"{LEASES}/someone-else", None),
    ("update", f"{LEASES}/someone-else", None),
    ("create", "roles.rbac.authorization.k8s.io", None),
]


def granted(kubectl: Kubectl, account: str, checks: list[Check], namespace: str) -> list[Check]:
    """The checks `account` passes in `namespace`."""
    return [c for c in checks if can_i(kubectl, account, c[0], c[1], namespace, c[2])]


def refused(kubectl: Kubectl, account: str, checks: list[Check], namespace: str) -> list[Check]:
    """The checks `account` fails in `namespace`."""
    return [c for c in checks if not can_i(kubectl, account, c[0], c[1], namespace, c[2])]


def install(helm: Helm, release: str, namespace: str, *args: str) -> None:
    result = helm("install", release, str(CHART), "-n", namespace, *NO_POD, *args, check=False)
    assert result.returncode == 0, result.stderr


# --- lint and render ----------------------------------------------------------------------


@pytest.mark.parametrize("strict", [False, True], ids=["lint", "lint-strict"])
@pytest.mark.parametrize(
    "values",
    [(), ("--set", "clusterWide=true,metrics.enabled=false,leaderElection.enabled=false")],
    ids=["defaults", "cluster-wide"],
)
def test_helm_lint_passes(helm: Helm, strict: bool, values: tuple[str, ...]) -> None:
    args = ["lint", str(CHART), *values, *(["--strict"] if strict else [])]
    result = helm(*args, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout + result.stderr


def test_default_render(helm: Helm) -> None:
    docs = render(helm, "ops", release="rel")
    kinds = sorted(d["kind"] for d in docs)
    expected = ["Deployment", "Lease", "Role", "Role", "RoleBinding", "RoleBinding", "Service"]
    assert kinds == [*expected, "ServiceAccount"]
    for doc in docs:
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "synthpref"
        assert labels["app.kubernetes.io/instance"] == "rel"
        assert labels["app.kubernetes.io/version"] == "0.1.0"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "synthpref-0.1.0"
    (deployment,) = find(docs, "Deployment")
    assert deployment["metadata"]["name"] == "rel-synthpref"
    assert deployment["spec"]["replicas"] == 1
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "rel-synthpref"
    assert pod["automountServiceAccountToken"] is True
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    c = container(docs)
    assert c["image"] == "ghcr.io/synthpref/operator:0.1.0"
    assert c["imagePullPolicy"] == "IfNotPresent"
    assert c["command"] == ["synthpref"]
    assert c["args"] == [
        "operator", "run",
        "--namespace", "ops",
        "--interval", "10",
        "--workers", "64",
        "--job-creations", "64",
        "--log-level", "info",
        "--log-format", "json",
        "--metrics-port", "8080",
        "--metrics-host", "0.0.0.0",
        "--leader-election",
        "--lease-name", "rel-synthpref",
        "--lease-duration", "15",
        "--renew-deadline", "10",
        "--retry-period", "2",
    ]  # fmt: skip
    env = {e["name"]: e for e in c["env"]}
    assert list(env)[:3] == ["POD_NAME", "POD_NAMESPACE", "SYNTHPREF_OPERATOR_SETTINGS"]
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert json.loads(env["SYNTHPREF_OPERATOR_SETTINGS"]["value"]) == {
        "image": "ghcr.io/synthpref/worker:0.1.0",
        "cpuImage": "ghcr.io/synthpref/worker-cpu:0.1.0",
        "imagePullPolicy": "IfNotPresent",
        "gpuResource": "nvidia.com/gpu",
        "gpuNodeSelector": {},
        "gpuTolerations": [],
        "extraEnv": {},
        "workerUserId": 10001,
        "allowedEndpoints": ["https://api.openai.com/v1"],
        "allowedImagePrefixes": [],
        "allowedServiceAccounts": [],
        "operatorApiKeyNamespaces": [],
        "operatorStorage": {},
        "allowLocalPaths": False,
        "allowedPriorityClasses": [],
        "allowedTolerations": [],
        "allowedNodeLabels": [],
        "maxModels": 64,
        "maxReplicas": 64,
        "maxShards": 50000,
        "maxStorageObjectBytes": 8388608,
        "maxListedKeys": 500000,
        "secretNames": [],
        "deletionTimeoutSeconds": 600,
    }
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
    }
    assert c["resources"] == {
        "requests": {"cpu": "100m", "memory": "256Mi"},
        "limits": {"memory": "512Mi"},
    }
    assert c["ports"] == [{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert c["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["volumes"][0]["name"] == "tmp" and "emptyDir" in pod["volumes"][0]
    (service,) = find(docs, "Service")
    assert service["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert service["metadata"]["annotations"]["prometheus.io/port"] == "8080"
    assert service["spec"]["ports"][0]["port"] == 8080
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert find(docs, "NetworkPolicy") == []  # metrics.networkPolicy.enabled is false


def test_rbac_rules_render_exactly_the_operator_calls(helm: Helm) -> None:
    docs = render(helm, "ops", release="rel")
    roles = {r["metadata"]["name"]: r for r in find(docs, "Role")}
    assert rules_of(roles["rel-synthpref"]) == NAMESPACED_RULES
    lease_role = roles["rel-synthpref-leader-election"]
    assert lease_role["metadata"]["namespace"] == "ops"
    assert lease_role["rules"] == [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["rel-synthpref"],
            "verbs": ["get", "update"],
        },
    ]
    for binding in find(docs, "RoleBinding"):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "rel-synthpref", "namespace": "ops"}
        ]
    wide = render(helm, "ops", "--set", "clusterWide=true", release="rel")
    (cluster_role,) = find(wide, "ClusterRole")
    assert rules_of(cluster_role) == NAMESPACED_RULES
    assert [r["metadata"]["name"] for r in find(wide, "Role")] == ["rel-synthpref-leader-election"]
    named = render(helm, "ops", "--set", "rbac.secretNames={openai,s3}", release="rel")
    (secret_rule,) = [
        rule
        for role in find(named, "Role")
        for rule in role["rules"]
        if rule["resources"] == ["secrets"]
    ]
    assert secret_rule == {
        "apiGroups": [""],
        "resources": ["secrets"],
        "verbs": ["get"],
        "resourceNames": ["openai", "s3"],
    }


def test_values_reach_the_deployment(helm: Helm) -> None:
    values = [
        "--set", "watchNamespaces={team-a,team-b}",
        "--set-json", "operator.reconcileIntervalSeconds=2.5",  # --set makes "2.5" a string
        "--set", "operator.logLevel=debug,operator.logFormat=text",
        "--set", "metrics.port=9090",
        "--set", "image.tag=dev,image.pullPolicy=Always",
        "--set", "imagePullSecrets[0].name=regcred",
        "--set", "workers.env.HF_HOME=/cache,workers.gpuNodeSelector.gpu=h100",
        "--set", "workers.gpuTolerations[0].key=gpu,workers.gpuTolerations[0].operator=Exists",
        "--set", "operator.env[0].name=OPENAI_BASE_URL,operator.env[0].value=http://judge",
        "--set", "leaderElection.leaseDurationSeconds=30",
        "--set", "nodeSelector.pool=ops,podLabels.team=ml,podAnnotations.note=x",
        "--set", "fullnameOverride=sp",
        "--set", "security.allowedEndpoints={https://gw.example:8443/v1,*}",
        "--set", "security.allowedImagePrefixes={registry.example/ml/}",
        "--set", "security.allowedServiceAccounts={s3-reader}",
        "--set", "rbac.secretNames={openai,s3}",
        "--set", "operator.deletionTimeoutSeconds=30",
        "--set", "metrics.bindAddress=127.0.0.1",
        "--set", "security.operatorApiKeyNamespaces={team-a,*}",
        "--set", "security.operatorStorage.team-a={s3://data/team-a/,s3://shared/}",
        "--set", "security.allowLocalPaths=true",
        "--set", "security.allowedPriorityClasses={batch-low}",
        "--set", "security.allowedTolerations[0].key=spot",
        "--set", "security.allowedTolerations[0].operator=Exists",
        "--set", "security.allowedNodeLabels={pool=gpu,zone=*}",
        "--set", "security.limits.maxModels=8,security.limits.maxReplicas=4",
        "--set", "security.limits.maxShards=100000,security.limits.maxStorageObjectBytes=1048576",
        "--set", "security.limits.maxListedKeys=2000000",
    ]  # fmt: skip
    docs = render(helm, "ops", *values)
    c = container(docs)
    args = c["args"]
    assert args[:6] == ["operator", "run", "--namespace", "team-a", "--namespace", "team-b"]
    assert "--all-namespaces" not in args
    assert args[args.index("--interval") + 1] == "2.5"
    assert args[args.index("--log-level") + 1] == "debug"
    assert args[args.index("--log-format") + 1] == "text"
    assert args[args.index("--metrics-port") + 1] == "9090"
    assert args[args.index("--metrics-host") + 1] == "127.0.0.1"
    assert args[args.index("--lease-name") + 1] == "sp"
    assert args[args.index("--lease-duration") + 1] == "30"
    assert c["image"] == "ghcr.io/synthpref/operator:dev"
    assert c["imagePullPolicy"] == "Always"
    assert c["ports"][0]["containerPort"] == 9090
    env = {e["name"]: e for e in c["env"]}
    assert env["OPENAI_BASE_URL"] == {"name": "OPENAI_BASE_URL", "value": "http://judge"}
    settings = json.loads(env["SYNTHPREF_OPERATOR_SETTINGS"]["value"])
    assert settings["extraEnv"] == {"HF_HOME": "/cache"}
    assert settings["gpuNodeSelector"] == {"gpu": "h100"}
    assert settings["gpuTolerations"] == [{"key": "gpu", "operator": "Exists"}]
    assert settings["allowedEndpoints"] == ["https://gw.example:8443/v1", "*"]
    assert settings["allowedImagePrefixes"] == ["registry.example/ml/"]
    assert settings["allowedServiceAccounts"] == ["s3-reader"]
    assert settings["secretNames"] == ["openai", "s3"]
    assert settings["deletionTimeoutSeconds"] == 30
    assert settings["operatorApiKeyNamespaces"] == ["team-a", "*"]
    assert settings["operatorStorage"] == {"team-a": ["s3://data/team-a/", "s3://shared/"]}
    assert settings["allowLocalPaths"] is True
    assert settings["allowedPriorityClasses"] == ["batch-low"]
    assert settings["allowedTolerations"] == [{"key": "spot", "operator": "Exists"}]
    assert settings["allowedNodeLabels"] == ["pool=gpu", "zone=*"]
    assert {k: settings[k] for k in settings if k.startswith("max")} == {
        "maxModels": 8,
        "maxReplicas": 4,
        "maxShards": 100000,
        "maxStorageObjectBytes": 1048576,
        "maxListedKeys": 2000000,
    }
    assert "limits" not in settings  # flattened
    parse_settings(env["SYNTHPREF_OPERATOR_SETTINGS"]["value"])
    (deployment,) = find(docs, "Deployment")
    template = deployment["spec"]["template"]
    assert template["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert template["spec"]["nodeSelector"] == {"pool": "ops"}
    assert template["metadata"]["labels"]["team"] == "ml"
    assert template["metadata"]["annotations"]["note"] == "x"
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]) for r in find(docs, "Role")}
    assert roles == {("team-a", "sp"), ("team-b", "sp"), ("ops", "sp-leader-election")}
    bindings = find(docs, "RoleBinding")
    assert {b["subjects"][0]["namespace"] for b in bindings} == {"ops"}


def test_switches_turn_parts_off(helm: Helm) -> None:
    docs = render(
        helm,
        "ops",
        "--set",
        "clusterWide=true,metrics.enabled=false,leaderElection.enabled=false",
    )
    c = container(docs)
    assert c["args"][2] == "--all-namespaces" and "--namespace" not in c["args"]
    assert c["args"][c["args"].index("--metrics-port") + 1] == "0"
    assert "--no-leader-election" in c["args"] and "--lease-name" not in c["args"]
    for key in ("ports", "livenessProbe", "readinessProbe"):
        assert key not in c
    assert not find(docs, "Service") and not find(docs, "Role")
    assert len(find(docs, "ClusterRole")) == 1
    bare = render(helm, "ops", "--set", "rbac.create=false,serviceAccount.create=false")
    # The Lease is no RBAC object: it stays while leader election is on.
    assert {d["kind"] for d in bare} == {"Deployment", "Service", "Lease"}
    (deployment,) = find(bare, "Deployment")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "default"


def test_network_policy_admits_only_the_metrics_port_from_the_peers(helm: Helm) -> None:
    peers = [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
        {"podSelector": {"matchLabels": {"app": "prometheus"}}},
        {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}},
    ]
    docs = render(
        helm,
        "ops",
        "--set",
        "metrics.networkPolicy.enabled=true,metrics.port=9090",
        "--set-json",
        f"metrics.networkPolicy.from={json.dumps(peers)}",
    )
    (policy,) = find(docs, "NetworkPolicy")
    (deployment,) = find(docs, "Deployment")
    assert policy["apiVersion"] == "networking.k8s.io/v1"
    assert policy["metadata"]["name"] == "rel-synthpref"
    assert policy["metadata"]["namespace"] == "ops"
    assert policy["spec"]["podSelector"] == deployment["spec"]["selector"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["ingress"] == [
        {"from": peers, "ports": [{"port": 9090, "protocol": "TCP"}]}
    ]
    assert container(docs)["ports"][0]["containerPort"] == 9090
    # No peers (or no metrics port): the operator pods admit no connection at all. A rule
    # without `from` would admit everyone.
    for values in ("", ",metrics.enabled=false"):
        closed = render(helm, "ops", "--set", f"metrics.networkPolicy.enabled=true{values}")
        (policy,) = find(closed, "NetworkPolicy")
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        assert policy["spec"]["ingress"] == []


CUSTOM = (
    "--set", "watchNamespaces={a,b},operator.logFormat=text,metrics.port=9090",
    "--set", "workers.gpuTolerations[0].key=gpu,workers.gpuTolerations[0].effect=NoSchedule",
    "--set", "workers.env.HF_HOME=/cache,workers.gpuResource=amd.com/gpu",
    "--set-json", "operator.reconcileIntervalSeconds=0.5",
    "--set", "security.allowedEndpoints={http://vllm.ml:8000/v1},rbac.secretNames={openai}",
    "--set", "security.allowedImagePrefixes={registry.example/ml/}",
    "--set-json", "operator.deletionTimeoutSeconds=12.5",
    "--set", "metrics.bindAddress=::",
    "--set", "security.operatorApiKeyNamespaces={a}",
    "--set-json", 'security.operatorStorage={"*":["s3://shared/"],"b":["s3://team-b/"]}',
    "--set", "security.allowLocalPaths=true,security.allowedPriorityClasses={*}",
    "--set", "security.allowedTolerations[0].key=spot,security.allowedTolerations[0].value=yes",
    "--set", "security.allowedNodeLabels={pool=gpu,*}",
    "--set", "security.limits.maxModels=2,security.limits.maxReplicas=3",
    "--set", "security.limits.maxShards=10,security.limits.maxStorageObjectBytes=1024",
    "--set", "security.limits.maxListedKeys=1000",
)  # fmt: skip


@pytest.mark.parametrize(
    "values",
    [(), ("--set", "clusterWide=true,metrics.enabled=false,leaderElection.enabled=false"), CUSTOM],
    ids=["defaults", "cluster-wide", "custom"],
)
def test_rendered_command_line_is_accepted_by_the_cli(helm: Helm, values: tuple[str, ...]) -> None:
    """The container's args and SYNTHPREF_OPERATOR_SETTINGS parse with the operator's own CLI."""
    c = container(render(helm, "ops", *values))
    assert c["command"] == ["synthpref"] and c["args"][:2] == ["operator", "run"]
    params = run_command.make_context("run", list(c["args"][2:])).params  # parses, runs nothing
    assert bool(params["namespaces"]) != params["cluster_wide"]
    if params["leader_election"]:
        assert params["lease_duration"] > params["renew_deadline"] > 1.2 * params["retry_period"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    settings = parse_settings(str(env["SYNTHPREF_OPERATOR_SETTINGS"]))
    if values != CUSTOM:
        assert settings == OperatorSettings()
        return
    assert params["namespaces"] == ("a", "b") and params["interval"] == 0.5
    assert params["log_format"] == "text" and params["metrics_port"] == 9090
    assert params["metrics_host"] == "::"
    assert settings.gpu_resource == "amd.com/gpu"
    assert settings.extra_env == {"HF_HOME": "/cache"}
    assert settings.gpu_tolerations == [Toleration(key="gpu", effect="NoSchedule")]
    assert settings.allowed_endpoints == ["http://vllm.ml:8000/v1"]
    assert settings.allowed_image_prefixes == ["registry.example/ml/"]
    assert settings.secret_names == ["openai"]
    assert settings.deletion_timeout_seconds == 12.5
    assert settings.operator_api_key_namespaces == ["a"]
    assert settings.operator_storage == {"*": ["s3://shared/"], "b": ["s3://team-b/"]}
    assert settings.allow_local_paths is True
    assert settings.allowed_priority_classes == ["*"]
    assert settings.allowed_tolerations == [Toleration(key="spot", value="yes")]
    assert settings.allowed_node_labels == ["pool=gpu", "*"]
    assert (settings.max_models, settings.max_replicas, settings.max_shards) == (2, 3, 10)
    assert (settings.max_storage_object_bytes, settings.max_listed_keys) == (1024, 1000)


def test_included_crds_are_the_generated_ones(helm: Helm) -> None:
    docs = render(helm, "ops", "--include-crds")
    included = {d["metadata"]["name"]: d for d in find(docs, "CustomResourceDefinition")}
    assert included == {
        CRD_NAME: yaml.safe_load((ROOT / CHART_CRD_PATH).read_text()),
        CATALOGS: catalog_crd(),
    }


# --- server-side validation -----------------------------------------------------------------


@pytest.mark.parametrize(
    "case", ["defaults", "cluster-wide", "two-namespaces", "include-crds", "network-policy"]
)
def test_rendered_manifests_pass_server_side_validation(
    crd: None,
    helm: Helm,
    kubectl: Kubectl,
    namespace: str,
    make_namespace: Callable[[str], str],
    case: str,
) -> None:
    args: list[str] = []
    expected_roles = {namespace}
    if case == "cluster-wide":
        args = ["--set", "clusterWide=true"]
    elif case == "two-namespaces":
        first, second = make_namespace("a"), make_namespace("b")
        args = ["--set", f"watchNamespaces={{{first},{second}}}"]
        expected_roles = {first, second, namespace}
    elif case == "include-crds":
        args = ["--include-crds"]
    elif case == "network-policy":
        peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mon"}}}
        args = ["--set", "metrics.networkPolicy.enabled=true"]
        args += ["--set-json", f"metrics.networkPolicy.from={json.dumps([peer])}"]
    out = helm("template", release_name("dry"), str(CHART), "-n", namespace, *args).stdout
    result = kubectl("apply", "--dry-run=server", "-f", "-", input=out, check=False)
    assert result.returncode == 0, result.stderr
    applied = result.stdout.splitlines()
    assert applied and all(line.endswith("(server dry run)") for line in applied), applied
    assert sum("deployment.apps/" in line for line in applied) == 1
    if case == "cluster-wide":
        assert sum("clusterrole.rbac" in line for line in applied) == 1
    else:
        docs = [d for d in yaml.safe_load_all(out) if d]
        namespaces = {d["metadata"]["namespace"] for d in find(docs, "Role")}
        assert namespaces == expected_roles
    if case == "include-crds":
        crd_line = f"customresourcedefinition.apiextensions.k8s.io/{CRD_NAME}"
        assert any(crd_line in line for line in applied), applied
    if case == "network-policy":
        assert sum("networkpolicy.networking.k8s.io/" in line for line in applied) == 1


def test_a_missing_watched_namespace_is_rejected_by_the_server(
    helm: Helm, kubectl: Kubectl, namespace: str
) -> None:
    # The dry run above can fail: a Role in a namespace that does not exist is refused.
    out = helm(
        "template", "dry", str(CHART), "-n", namespace, "--set", "watchNamespaces={no-such-ns}"
    ).stdout
    result = kubectl("apply", "--dry-run=server", "-f", "-", input=out, check=False)
    assert result.returncode != 0 and "no-such-ns" in result.stderr, result.stderr


# --- schema --------------------------------------------------------------------------------


BAD_VALUES = [
    ({"operator": {"logFormat": "xml"}}, "at '/operator/logFormat': value must be one of"),
    ({"operator": {"logLevel": "verbose"}}, "at '/operator/logLevel': value must be one of"),
    ({"metrics": {"port": "eighty"}}, "at '/metrics/port': got string, want integer"),
    ({"metrics": {"port": 70000}}, "at '/metrics/port': maximum"),
    ({"replicas": 2}, "additional properties 'replicas' not allowed"),
    ({"operator": {"interval": 5}}, "additional properties 'interval' not allowed"),
    ({"replicaCount": -1}, "at '/replicaCount': minimum"),
    ({"image": {"pullPolicy": "Sometimes"}}, "at '/image/pullPolicy': value must be one of"),
    ({"workers": {"env": {"HF_HOME": 1}}}, "at '/workers/env/HF_HOME': got number, want string"),
    ({"workers": {"runAsUser": 0}}, "at '/workers/runAsUser': minimum"),
    ({"workers": {"gpuTolerations": [{"operator": "Maybe"}]}}, "/workers/gpuTolerations/0"),
    ({"watchNamespaces": ["Bad_NS"]}, "at '/watchNamespaces/0'"),
    ({"rbac": {"secretNames": "openai"}}, "at '/rbac/secretNames': got string, want array"),
    ({"security": {"allowedEndpoints": ["https://u@x/v1"]}}, "/security/allowedEndpoints/0"),
    ({"security": {"allowedEndpoints": "*"}}, "at '/security/allowedEndpoints': got string"),
    ({"security": {"allowedServiceAccounts": ["Admin"]}}, "/security/allowedServiceAccounts/0"),
    ({"security": {"allowImages": []}}, "additional properties 'allowImages' not allowed"),
    ({"operator": {"deletionTimeoutSeconds": 0}}, "at '/operator/deletionTimeoutSeconds'"),
    ({"leaderElection": {"enabled": "yes"}}, "at '/leaderElection/enabled': got string"),
    ({"operator": {"reconcileIntervalSeconds": 0}}, "at '/operator/reconcileIntervalSeconds'"),
    ({"security": {"operatorApiKeyNamespaces": ["A"]}}, "/security/operatorApiKeyNamespaces/0"),
    ({"security": {"operatorApiKeyNamespaces": "*"}}, "at '/security/operatorApiKeyNamespaces'"),
    ({"security": {"operatorStorage": {"a": ["/data"]}}}, "at '/security/operatorStorage/a/0'"),
    ({"security": {"operatorStorage": {"a": "s3://x/"}}}, "at '/security/operatorStorage/a'"),
    ({"security": {"allowLocalPaths": "yes"}}, "at '/security/allowLocalPaths': got string"),
    ({"security": {"allowedPriorityClasses": ["High"]}}, "/security/allowedPriorityClasses/0"),
    ({"security": {"allowedTolerations": [{"effect": "Never"}]}}, "/security/allowedTolerations/0"),
    ({"security": {"allowedNodeLabels": ["gpu"]}}, "at '/security/allowedNodeLabels/0'"),
    ({"security": {"limits": {"maxModels": 0}}}, "at '/security/limits/maxModels': minimum"),
    ({"security": {"limits": {"maxReplicas": 0}}}, "at '/security/limits/maxReplicas': minimum"),
    ({"security": {"limits": {"maxShards": 1.5}}}, "at '/security/limits/maxShards'"),
    ({"security": {"limits": {"maxStorageObjectBytes": 1023}}}, "/limits/maxStorageObjectBytes"),
    ({"security": {"limits": {"maxListedKeys": 999}}}, "at '/security/limits/maxListedKeys'"),
    ({"security": {"limits": {"maxJobs": 1}}}, "additional properties 'maxJobs' not allowed"),
    ({"metrics": {"bindAddress": ""}}, "at '/metrics/bindAddress'"),
    ({"metrics": {"networkPolicy": {"enabled": 1}}}, "at '/metrics/networkPolicy/enabled'"),
    ({"metrics": {"networkPolicy": {"from": {}}}}, "at '/metrics/networkPolicy/from'"),
    ({"metrics": {"networkPolicy": {"from": [{"pods": {}}]}}}, "/metrics/networkPolicy/from/0"),
    # Checks the schema cannot express, made by the templates.
    ({"clusterWide": True, "watchNamespaces": ["a"]}, "leave watchNamespaces empty"),
    ({"replicaCount": 2, "leaderElection": {"enabled": False}}, "needs leaderElection.enabled"),
    ({"leaderElection": {"renewDeadlineSeconds": 20}}, "must be more than leaderElection.renew"),
]


@pytest.mark.parametrize(
    ("values", "message"),
    BAD_VALUES,
    ids=[m.split("'")[1] if "'" in m else m for _, m in BAD_VALUES],
)
def test_bad_values_fail_naming_the_field(
    helm: Helm, tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    result = helm("template", "bad", str(CHART), "-f", str(values_file), check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_bad_values_fail_helm_install(
    helm: Helm, kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump({"operator": {"logFormat": "xml"}, "oops": 1}))
    release = release_name("bad")
    args = ["install", release, str(CHART), "-n", namespace, *NO_POD, "-f", str(values_file)]
    result = helm(*args, check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert "at '/operator/logFormat': value must be one of 'json', 'text'" in result.stderr
    assert "additional properties 'oops' not allowed" in result.stderr
    assert helm("list", "-n", namespace, "-q").stdout.strip() == ""
    selector = f"app.kubernetes.io/instance={release}"
    left = kubectl("get", "deploy,sa,role", "-n", namespace, "-o", "name", "-l", selector)
    assert left.stdout.strip() == ""


# --- RBAC on the real API server ------------------------------------------------------------


def test_rbac_namespaced_mode(
    helm: Helm, kubectl: Kubectl, namespace: str, make_namespace: Callable[[str], str]
) -> None:
    other = make_namespace("other")
    release = release_name("rbac")
    install(helm, release, namespace)
    account = f"system:serviceaccount:{namespace}:{release}-synthpref"
    lease = f"{LEASES}/{release}-synthpref"
    lease_calls: list[Check] = [("get", lease, None), ("update", lease, None)]
    assert refused(kubectl, account, RUN_CALLS + lease_calls, namespace) == []
    assert granted(kubectl, account, FORBIDDEN, namespace) == []
    # Nothing at all in a namespace it does not watch, and no cluster-wide access.
    assert granted(kubectl, account, RUN_CALLS + lease_calls, other) == []
    everywhere = kubectl(
        "auth", "can-i", "list", RUNS, "--all-namespaces", f"--as={account}", check=False
    )
    assert everywhere.stdout.strip() == "no", everywhere.stderr


def test_rbac_cluster_wide_mode(
    helm: Helm, kubectl: Kubectl, namespace: str, make_namespace: Callable[[str], str]
) -> None:
    other = make_namespace("other")
    release = release_name("wide")
    try:
        install(helm, release, namespace, "--set", "clusterWide=true")
        account = f"system:serviceaccount:{namespace}:{release}-synthpref"
        for ns in (namespace, other):
            assert refused(kubectl, account, RUN_CALLS, ns) == []
            assert granted(kubectl, account, FORBIDDEN, ns) == []
        # The Lease stays in the release namespace.
        lease = f"{LEASES}/{release}-synthpref"
        assert can_i(kubectl, account, "update", lease, namespace)
        assert not can_i(kubectl, account, "update", lease, other)
        everywhere = kubectl(
            "auth", "can-i", "watch", RUNS, "--all-namespaces", f"--as={account}", check=False
        )
        assert everywhere.stdout.strip() == "yes", everywhere.stderr
    finally:
        helm("uninstall", release, "-n", namespace, "--wait", check=False)
    selector = f"app.kubernetes.io/instance={release}"
    left = kubectl("get", "clusterrole,clusterrolebinding", "-o", "name", "-l", selector)
    assert left.stdout.strip() == ""


def test_rbac_secret_names_restrict_secret_reads(
    helm: Helm, kubectl: Kubectl, namespace: str
) -> None:
    release = release_name("secrets")
    install(helm, release, namespace, "--set", "rbac.secretNames={openai,s3}")
    account = f"system:serviceaccount:{namespace}:{release}-synthpref"
    assert can_i(kubectl, account, "get", "secrets/openai", namespace)
    assert can_i(kubectl, account, "get", "secrets/s3", namespace)
    assert not can_i(kubectl, account, "get", "secrets/other", namespace)
    assert not can_i(kubectl, account, "get", "secrets", namespace)  # any name: no
    assert not can_i(kubectl, account, "list", "secrets", namespace)
    assert not can_i(kubectl, account, "delete", "secrets/openai", namespace)


# --- uninstall -----------------------------------------------------------------------------


NAMESPACED_KINDS = "deployments,replicasets,serviceaccounts,roles,rolebindings,services,leases"
CLUSTER_KINDS = "clusterroles,clusterrolebindings"


def owned(kubectl: Kubectl, release: str) -> set[str]:
    """Everything carrying the release's instance label, in any namespace and cluster-wide."""
    selector = f"app.kubernetes.io/instance={release}"
    names: set[str] = set()
    for kinds, scope in ((NAMESPACED_KINDS, ["-A"]), (CLUSTER_KINDS, [])):
        result = kubectl("get", kinds, *scope, "-l", selector, "-o", "json")
        for item in json.loads(result.stdout)["items"]:
            ns = item["metadata"].get("namespace", "")
            names.add(f"{item['kind']}/{ns}/{item['metadata']['name']}".replace("//", "/"))
    return names


def delete_crd_if_unused(kubectl: Kubectl) -> bool:
    """Delete the CRD so that `helm install` must create it from crds/; only when no
    PreferenceRun exists anywhere (a run with a finalizer and no operator would block it)."""
    if kubectl("get", "crd", CRD_NAME, check=False).returncode != 0:
        return True
    runs = kubectl("get", RUNS, "-A", "-o", "name", check=False)
    if runs.returncode != 0 or runs.stdout.strip():
        return False
    kubectl("delete", "crd", CRD_NAME, "--wait", "--timeout=60s")
    return True


@pytest.mark.parametrize("mode", ["namespaced", "cluster-wide"])
def test_uninstall_removes_everything_but_the_crd(
    helm: Helm,
    kubectl: Kubectl,
    namespace: str,
    make_namespace: Callable[[str], str],
    mode: str,
) -> None:
    crd_was_deleted = delete_crd_if_unused(kubectl)
    release = release_name("gone")
    full = f"{release}-synthpref"
    if mode == "namespaced":
        watched = make_namespace("w")
        install(helm, release, namespace, "--set", f"watchNamespaces={{{namespace},{watched}}}")
        expected = {
            f"Deployment/{namespace}/{full}",
            f"ServiceAccount/{namespace}/{full}",
            f"Service/{namespace}/{full}-metrics",
            f"Role/{namespace}/{full}",
            f"RoleBinding/{namespace}/{full}",
            f"Role/{watched}/{full}",
            f"RoleBinding/{watched}/{full}",
            f"Role/{namespace}/{full}-leader-election",
            f"RoleBinding/{namespace}/{full}-leader-election",
            f"Lease/{namespace}/{full}",
        }
    else:
        install(helm, release, namespace, "--set", "clusterWide=true")
        expected = {
            f"Deployment/{namespace}/{full}",
            f"ServiceAccount/{namespace}/{full}",
            f"Service/{namespace}/{full}-metrics",
            f"ClusterRole/{namespace}-{full}",
            f"ClusterRoleBinding/{namespace}-{full}",
            f"Role/{namespace}/{full}-leader-election",
            f"RoleBinding/{namespace}/{full}-leader-election",
            f"Lease/{namespace}/{full}",
        }
    if crd_was_deleted:
        # The chart's crds/ directory installed the CRD.
        kubectl("get", "crd", CRD_NAME)
    before = owned(kubectl, release)
    assert expected <= before, expected - before
    result = helm("uninstall", release, "-n", namespace, "--wait", "--cascade=foreground")
    assert "uninstalled" in result.stdout
    deadline = time.monotonic() + 60
    left = owned(kubectl, release)
    while left and time.monotonic() < deadline:  # ReplicaSets go with the garbage collector
        time.sleep(0.5)
        left = owned(kubectl, release)
    assert left == set()
    # Helm never upgrades or deletes what it installed from a chart's crds/ directory
    # (https://helm.sh/docs/chart_best_practices/custom_resource_definitions/): deleting the
    # CRD would delete every PreferenceRun in the cluster. It stays after uninstall.
    assert kubectl("get", "crd", CRD_NAME, check=False).returncode == 0
