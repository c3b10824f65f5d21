"""Applying a pass's actions against the real API server (`apply.Applier`): a stage's Jobs
are created together, and one refused Job neither stops the others nor goes unreported."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from synthpref_operator.apply import Applier
from synthpref_operator.names import Stage
from synthpref_operator.planner import CreateJob
from synthpref_operator.settings import OperatorSettings
from tests.builders import make_spec

pytestmark = pytest.mark.cluster


def test_a_stages_jobs_are_created_together_and_a_refused_one_is_raised(
    k8s_api_client: Any, namespace: str
) -> None:
    applier = Applier(k8s_api_client, OperatorSettings())
    run = {"metadata": {"name": "r1", "namespace": namespace, "uid": "u-1"}}
    spec = make_spec()
    good = [
        CreateJob(f"r1-generate-{model.name}", Stage.GENERATE, completions=2, model=model.name)
        for model in spec.models
    ]
    refused = CreateJob("R1_not_a_dns_name", Stage.GENERATE, completions=2, model="m0")
    with pytest.raises(client.ApiException) as raised:
        applier.create_jobs(run, spec, [*good[:2], refused, *good[2:]])
    assert raised.value.status == 422
    # Each of the others was created by this call (201), the refused one in their midst.
    assert sorted(applier.jobs_created) == [f"{namespace}/{a.name}" for a in good]
    # The next pass plans them again: Jobs that exist are success, not errors. (The garbage
    # collector may delete some meanwhile: their owner run does not exist; they are made again.)
    applier.create_jobs(run, spec, good)
