#!/usr/bin/env bash
# Build the CPU image with rootful podman and smoke-test it on 127.0.0.1.
#
# Written for a Debian 12 machine that has no Docker engine and cannot reach image
# registries. The script installs and configures podman and makes a local stand-in
# for the python:3.11-slim base image with debootstrap. It builds the image and runs
# it with host networking on a free port. Then it waits for /readyz, sends one
# POST /v1/embed and removes the container. It is a manual check, not a test.
#
# Usage: scripts/container.sh [all|engine|base|build|smoke]   (default: all)
# Environment:
#   MMS_CONTAINER_STATE  podman config and image storage (default /var/tmp/mms-container)
#   MMS_IMAGE            image tag to build and run (default localhost/mms:cpu)
#   MMS_READY_TIMEOUT_S  max seconds to wait for /readyz (default 600)
#   DEBIAN_MIRROR        mirror for debootstrap (default http://deb.debian.org/debian)
set -euo pipefail

ROOT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE_DIR=${MMS_CONTAINER_STATE:-/var/tmp/mms-container}
IMAGE=${MMS_IMAGE:-localhost/mms:cpu}
READY_TIMEOUT_S=${MMS_READY_TIMEOUT_S:-600}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# The stand-in carries the name of the Dockerfile's default CPU base, so the
# Dockerfile builds unchanged.
BASE_IMAGE=docker.io/library/python:3.11-slim
DEBOOTSTRAP_IMAGE=localhost/debian-python:bookworm

export CONTAINERS_CONF="$STATE_DIR/containers.conf"
export CONTAINERS_STORAGE_CONF="$STATE_DIR/storage.conf"

log() {
    printf '[container.sh] %s\n' "$*" >&2
}

install_engine() {
    local missing=()
    for tool in podman runc debootstrap catatonit; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    if ((${#missing[@]} > 0)); then
        log "installing ${missing[*]}"
        apt-get update -qq
        apt-get install -y -qq podman runc debootstrap catatonit
    fi
}

# Host networking keeps build and run steps off podman's bridge. The CA bundle
# lets pip inside a build trust a TLS-intercepting proxy. crun (podman 4.3's
# default) rejects hybrid cgroup layouts, so runc runs the containers.
write_engine_config() {
    mkdir -p "$STATE_DIR/storage" "$STATE_DIR/run"
    cat >"$CONTAINERS_CONF" <<'EOF'
[containers]
netns = "host"
volumes = ["/etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro"]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
    cat >"$CONTAINERS_STORAGE_CONF" <<EOF
[storage]
driver = "overlay"
graphroot = "$STATE_DIR/storage"
runroot = "$STATE_DIR/run"
EOF
}

# The stand-in is Debian's Python 3.11 in /usr/bin, not the official image's
# /usr/local layout, which is why the Dockerfile uses no /usr/local paths.
make_base_image() {
    if podman image exists "$BASE_IMAGE"; then
        log "base image $BASE_IMAGE exists"
        return
    fi
    local rootfs="$STATE_DIR/rootfs"
    rm -rf "$rootfs"
    log "debootstrap bookworm from $DEBIAN_MIRROR into $rootfs (a few minutes)"
    debootstrap --variant=minbase \
        --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
        bookworm "$rootfs" "$DEBIAN_MIRROR" >"$STATE_DIR/debootstrap.log"
    # Debian marks its Python as externally managed, but the official image does not.
    rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" --numeric-owner -cf - . |
        podman import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$DEBOOTSTRAP_IMAGE"
    podman tag "$DEBOOTSTRAP_IMAGE" "$BASE_IMAGE"
    rm -rf "$rootfs"
}

build_image() {
    log "building $IMAGE (VARIANT=cpu)"
    # --format docker keeps HEALTHCHECK, which the OCI image format drops.
    podman build --format docker --build-arg VARIANT=cpu -t "$IMAGE" -f "$ROOT_DIR/Dockerfile" "$ROOT_DIR"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_ready() {
    local name=$1 port=$2
    local started=$SECONDS
    local deadline=$((SECONDS + READY_TIMEOUT_S))
    while ((SECONDS < deadline)); do
        if [[ $(podman inspect --format '{{.State.Running}}' "$name") != true ]]; then
            log "container $name exited before it became ready; its log:"
            podman logs "$name" >&2 || true
            return 1
        fi
        if curl -fs -o /dev/null "http://127.0.0.1:$port/readyz"; then
            log "ready $((SECONDS - started)) s after the container started"
            return 0
        fi
        sleep 2
    done
    log "/readyz did not return 200 within ${READY_TIMEOUT_S} s; container log:"
    podman logs "$name" >&2 || true
    return 1
}

# Print the length of the longest list of numbers in a JSON body, or fail when
# there is none. Any response schema that contains an embedding vector passes.
check_vector() {
    python3 -c '
import json, math, sys

def vectors(node):
    if isinstance(node, list) and node and all(isinstance(x, (int, float)) for x in node):
        yield node
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else []
    for child in children:
        yield from vectors(child)

found = list(vectors(json.load(sys.stdin)))
if not found:
    sys.exit("response body contains no numeric vector")
longest = max(found, key=len)
if not all(math.isfinite(x) for x in longest):
    sys.exit("embedding vector contains NaN or infinity")
print(len(longest))
'
}

smoke_test() {
    if [[ ! -f "$ROOT_DIR/app/main.py" ]]; then
        log "app/main.py does not exist yet, so the image has no service to run; stopping before the run step"
        return 3
    fi
    local port name body status
    port=$(free_port)
    name="mms-smoke-$$"
    body=$(mktemp)
    # shellcheck disable=SC2064 # expand now: the trap must remove this container and file
    trap "podman rm -f -t 5 $name >/dev/null 2>&1 || true; rm -f $body" EXIT

    log "running $IMAGE as $name on 127.0.0.1:$port"
    # Without systemd, podman 4.3 logs errors about the health check timer on run
    # and stop. They are harmless, so they go to a file unless the command fails.
    local podman_errors="$STATE_DIR/podman-run.err"
    podman run -d --name "$name" --init --network host \
        -e UVICORN_HOST=127.0.0.1 -e UVICORN_PORT="$port" "$IMAGE" >/dev/null 2>"$podman_errors" ||
        { cat "$podman_errors" >&2; return 1; }
    wait_ready "$name" "$port"

    log "user id in the container: $(podman exec "$name" id -u)"
    podman healthcheck run "$name" && log "HEALTHCHECK passes"

    status=$(curl -sS -o "$body" -w '%{http_code}' -F text=hello "http://127.0.0.1:$port/v1/embed")
    if [[ $status != 200 ]]; then
        log "POST /v1/embed returned $status: $(head -c 2000 "$body")"
        return 1
    fi
    log "POST /v1/embed returned 200 with a vector of $(check_vector <"$body") numbers"

    local started=$SECONDS
    podman stop -t 30 "$name" >/dev/null 2>>"$podman_errors"
    log "container stopped $((SECONDS - started)) s after SIGTERM"
}

main() {
    local step=${1:-all}
    case $step in
    engine) install_engine && write_engine_config ;;
    base) install_engine && write_engine_config && make_base_image ;;
    build) write_engine_config && build_image ;;
    smoke) write_engine_config && smoke_test ;;
    all)
        install_engine
        write_engine_config
        make_base_image
        build_image
        smoke_test
        ;;
    *)
        echo "usage: $0 [all|engine|base|build|smoke]" >&2
        return 2
        ;;
    esac
}

main "$@"
