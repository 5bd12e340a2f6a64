#!/bin/sh
# GPU check for a machine with an NVIDIA GPU (run as root; Debian-ish; no package registry needed).
# 1. prints hpcdock's GPU inventory (NVML / nvidia-smi, device nodes, CDI specs);
# 2. if podman or docker is there: allocates one GPU, attaches it the way hpcdock would (CDI ->
#    nvidia runtime -> raw nodes), verifies the container got it, and runs `nvidia-smi -L` inside.
# Needs python3 with the `docker` and `pyyaml` packages (the repo's .venv, carried along, is used first).
set -eu
cd "$(dirname "$0")/.."
PY=python3
if [ -x .venv/bin/python ] && .venv/bin/python -c 'import docker, yaml' 2>/dev/null; then PY=.venv/bin/python; fi
export PYTHONPATH="$PWD/service${PYTHONPATH:+:$PYTHONPATH}"

echo "== inventory"
"$PY" -m hpcdock_service.gpu
if command -v nvidia-ctk >/dev/null && ! ls /etc/cdi/*.yaml /var/run/cdi/*.yaml >/dev/null 2>&1; then
    echo "== no CDI spec yet: nvidia-ctk cdi generate --output=/var/run/cdi/nvidia.yaml"
    nvidia-ctk cdi generate --output=/var/run/cdi/nvidia.yaml >/dev/null || echo "nvidia-ctk failed; continuing"
fi

SVC_PID=
if [ -z "${DOCKER_HOST:-}" ]; then
    if command -v podman >/dev/null; then
        SOCK=/run/hpcdock-gpu-check.sock
        podman system service --time=0 "unix://$SOCK" & SVC_PID=$!
        trap 'kill "$SVC_PID" 2>/dev/null || true' EXIT
        i=0; while [ ! -S "$SOCK" ] && [ $i -lt 50 ]; do sleep 0.2; i=$((i + 1)); done
        export DOCKER_HOST="unix://$SOCK" CLI=podman
    elif [ -S /var/run/docker.sock ]; then
        export DOCKER_HOST=unix:///var/run/docker.sock CLI=docker
    else
        echo "== no container engine (podman/docker): inventory only"; exit 0
    fi
fi
CLI=${CLI:-$(command -v podman >/dev/null && echo podman || echo docker)}

# A tiny image: nvidia-smi's glibc dependencies from this host (the driver itself comes from the attach).
IMAGE=${HPCDOCK_GPU_IMAGE:-}
if [ -z "$IMAGE" ]; then
    IMAGE=localhost/hpcdock-gpu-check:latest
    SMI=$(command -v nvidia-smi)
    # shellcheck disable=SC2046
    tar -chf - "$SMI" $(ldd "$SMI" | grep -o '/[^ ]*' | grep -v -e libnvidia -e libcuda) 2>/dev/null \
        | "$CLI" import - "$IMAGE" >/dev/null
fi

echo "== nvidia-smi -L in a container with one GPU ($CLI, DOCKER_HOST=$DOCKER_HOST)"
"$PY" -m hpcdock_service.gpu --run "$IMAGE" nvidia-smi -L
