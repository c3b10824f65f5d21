"""The operator process and the dev cluster's CLI without a cluster: kopf's false warning about
signals is dropped (only it), and `dev cluster env` prints what a first run needs."""

from __future__ import annotations

import inspect
import logging
import shlex

import pytest

from synthpref_operator.devcluster.cli import env_lines
from synthpref_operator.devcluster.services import SERVICE_VARIABLES
from synthpref_operator.handlers import (
    KOPF_RUNNING_LOGGER,
    THREAD_SIGNALS_WARNING,
    _SignalsHandledByTheProcess,
    quiet_thread_signals_warning,
)


def test_kopf_warns_of_signals_where_we_drop_it() -> None:
    """The filter sits on the logger kopf warns with, and matches kopf's own words."""
    from kopf._core.reactor import running

    assert running.logger.name == KOPF_RUNNING_LOGGER
    assert THREAD_SIGNALS_WARNING in inspect.getsource(running.spawn_tasks)


def test_only_the_thread_signals_warning_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    quiet_thread_signals_warning()
    quiet_thread_signals_warning()  # once per process, however many operators start
    logger = logging.getLogger(KOPF_RUNNING_LOGGER)
    assert sum(isinstance(f, _SignalsHandledByTheProcess) for f in logger.filters) == 1
    with caplog.at_level(logging.WARNING, logger=KOPF_RUNNING_LOGGER):
        logger.warning("OS signals are ignored: running not in the main thread.")
        logger.warning("OS signals are ignored: can't add signal handler in Windows.")
        logger.warning("something else")
    assert [r.getMessage() for r in caplog.records] == [
        "OS signals are ignored: can't add signal handler in Windows.",
        "something else",
    ]


STATE = {
    "pid": 1,
    "kubeconfig": "/state/cluster/admin.kubeconfig",
    "bin_dir": "/cache/kube/bin",
    "venv_bin": "/checkout/.venv/bin",
    "pod_logs": "/state/cluster/kubelet/pods",
}


def exported(lines: list[str]) -> dict[str, str]:
    found = {}
    for line in lines:
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").partition("=")
            found[name] = value
    return found


def test_env_lines_export_the_services_a_first_run_needs() -> None:
    services = {
        "OPENAI_BASE_URL": "http://127.0.0.1:5/v1",
        "OPENAI_API_KEY": "sk-synthpref-dev",
        "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:6",
        "AWS_ACCESS_KEY_ID": "synthpref-dev",
        "AWS_SECRET_ACCESS_KEY": "synthpref-dev-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    variables = exported(env_lines({**STATE, "services": services}))
    assert variables["KUBECONFIG"] == STATE["kubeconfig"]
    # kubectl and helm, then the virtualenv's synthpref (and aws where setup linked it).
    assert variables["PATH"] == "/cache/kube/bin:/checkout/.venv/bin:$PATH"
    assert {k: shlex.split(v)[0] for k, v in variables.items() if k in services} == services
    assert list(variables)[2:] == list(SERVICE_VARIABLES)


def test_env_lines_without_services_say_how_to_get_them() -> None:
    lines = env_lines(STATE)
    assert set(exported(lines)) == {"KUBECONFIG", "PATH"}
    hint = next(line for line in lines if "--with-services" in line)
    assert hint.startswith("# ")  # harmless under eval
    assert all(name in hint for name in SERVICE_VARIABLES)
