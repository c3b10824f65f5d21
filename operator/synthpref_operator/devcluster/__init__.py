"""A local Kubernetes control plane for tests and development.

`ControlPlane` runs etcd, kube-apiserver and kube-controller-manager (built from the official
Go modules by ``scripts/build-kube-binaries.sh``) as local processes on loopback ports.
`TestKubelet` plays the node: it binds pending pods, runs each pod's container command as a
local subprocess and writes pod status, so the real Job controller and garbage collector do
their part. Nothing here needs containers, root or a network beyond 127.0.0.1.
"""

from synthpref_operator.devcluster.binaries import build_binaries, default_bin_dir
from synthpref_operator.devcluster.controlplane import ControlPlane, ControlPlaneError
from synthpref_operator.devcluster.kubelet import Fault, PodRun, TestKubelet

__all__ = [
    "ControlPlane",
    "ControlPlaneError",
    "Fault",
    "PodRun",
    "TestKubelet",
    "build_binaries",
    "default_bin_dir",
]
