"""What makes a worker pod pass the Pod Security Standard `restricted`, with a read-only root
filesystem: the security contexts, the writable volumes and the environment that points every
library's caches at them.

Called by `builders.job_manifest`. Pure. Every worker pod runs as the images' uid (the operator
setting `workerUserId`) with no privilege escalation, no capabilities and the runtime's default
seccomp profile; the root filesystem is read-only. What the stages write outside storage goes
to two emptyDir volumes:

- `/tmp` (TMPDIR): temporary files, vLLM's IPC sockets and lock files, torch.compile scratch;
- `/home/synthpref` (HOME): every cache and config directory, each also named by its own
  variable so that no library falls back to a path of its own (Hugging Face downloads and
  modules, vLLM's compile cache and config, Triton kernels, TorchInductor, CUDA's JIT cache,
  FlashInfer and DeepGEMM JIT kernels under ~, numba, outlines).

Tensor-parallel pods also get a memory-backed /dev/shm (a container's own is 64 MiB).
Telemetry stays off: vLLM would otherwise write usage stats under its config directory and
send them out from every pod.
"""

from __future__ import annotations

from typing import Any

TMP_DIR = "/tmp"
HOME_DIR = "/home/synthpref"  # the GPU worker image's home (images/worker/Dockerfile)
SHM_DIR = "/dev/shm"
_CACHE = f"{HOME_DIR}/.cache"
_CONFIG = f"{HOME_DIR}/.config"

# Where each library writes, pointed into the two volumes. The GPU worker image sets the same
# defaults (tests/unit/test_images.py checks it), so `docker run --read-only` with the same two
# mounts behaves as a pod does.
WRITABLE_ENV: dict[str, str] = {
    "HOME": HOME_DIR,
    "TMPDIR": TMP_DIR,
    "XDG_CACHE_HOME": _CACHE,
    "XDG_CONFIG_HOME": _CONFIG,
    "HF_HOME": f"{_CACHE}/huggingface",
    "VLLM_CACHE_ROOT": f"{_CACHE}/vllm",
    "VLLM_CONFIG_ROOT": f"{_CONFIG}/vllm",
    "TRITON_CACHE_DIR": f"{_CACHE}/triton",
    "TORCHINDUCTOR_CACHE_DIR": f"{_CACHE}/torchinductor",
    "CUDA_CACHE_PATH": f"{_CACHE}/nv",
    "NUMBA_CACHE_DIR": f"{_CACHE}/numba",
    "OUTLINES_CACHE_DIR": f"{_CACHE}/outlines",
    # No usage reports (vLLM's go to stats.vllm.ai; Hugging Face's with each download).
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}


def pod_security_context(user_id: int) -> dict[str, Any]:
    """The pod's securityContext: non-root as the images' uid, seccomp RuntimeDefault.

    fsGroup makes the emptyDir volumes the worker's group's, whatever the runtime does.
    """
    return {
        "runAsNonRoot": True,
        "runAsUser": user_id,
        "runAsGroup": user_id,
        "fsGroup": user_id,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    """The worker container's securityContext (what `restricted` asks, and a read-only root)."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
    }


def writable_volumes(*, shared_memory: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(pod volumes, container volumeMounts) of the writable directories.

    `shared_memory`: add a memory-backed /dev/shm (tensor-parallel vLLM workers talk through it;
    what it holds counts against the pod's memory limit).
    """
    dirs = {"tmp": TMP_DIR, "home": HOME_DIR}
    volumes: list[dict[str, Any]] = [{"name": name, "emptyDir": {}} for name in dirs]
    mounts = [{"name": name, "mountPath": path} for name, path in dirs.items()]
    if shared_memory:
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
        mounts.append({"name": "dshm", "mountPath": SHM_DIR})
    return volumes, mounts
