"""Operator-wide defaults for worker pods (images, GPU resource name, GPU node placement).

Built by the CLI (`synthpref operator run`) and handed to the builders; a run's `spec.workers`
overrides them field by field.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from synthpref.spec import Toleration


class OperatorSettings(BaseModel):
    """Defaults for the Jobs the operator creates."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    image: str = Field(default="ghcr.io/synthpref/worker:0.1.0", description="GPU worker image.")
    cpu_image: str = Field(
        default="ghcr.io/synthpref/worker-cpu:0.1.0", description="CPU worker image."
    )
    image_pull_policy: str = Field(default="IfNotPresent", description="Worker pull policy.")
    gpu_resource: str = Field(default="nvidia.com/gpu", description="GPU extended resource.")
    gpu_node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node selector of GPU Jobs unless the run sets one."
    )
    gpu_tolerations: list[Toleration] = Field(
        default_factory=list, description="Tolerations of GPU Jobs unless the run sets some."
    )
    extra_env: dict[str, str] = Field(
        default_factory=dict, description="Plain environment variables for every worker."
    )
