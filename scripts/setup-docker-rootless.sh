#!/usr/bin/env bash
# Rootless Docker with a single-node Swarm: the Swarm engine's tests (`make test`) and the
# benchmarks' Swarm rows. Two parts:
#   as root:  scripts/setup-docker-rootless.sh --system   installs docker.io and rootlesskit
#   as user:  scripts/setup-docker-rootless.sh            starts the user's dockerd (detached, its
#             own data-root under ~/.local/share/hpcdock-docker), `docker swarm init`, imports the
#             busybox test image. Prints the socket URL (unix://...) on its last line.
# Idempotent: a daemon that already answers with the flags below is reused (one started without
# them is restarted). Stop it with `--stop`.
# The daemon runs with --no-new-privileges (API 1.41 has no per-service option for it) and with
# iptables (the default), which is what makes the Swarm engine's --internal network isolate tasks;
# the swarm listens on loopback only, so a task cannot reach the manager's ports either.
set -euo pipefail
image=${HPCDOCK_TEST_IMAGE:-localhost/hpcdock-test:latest}

if [ "${1:-}" = --system ]; then
  [ "$(id -u)" = 0 ] || { echo "setup-docker-rootless: --system must run as root" >&2; exit 1; }
  missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v rootlesskit >/dev/null || missing+=(rootlesskit)
  command -v newuidmap >/dev/null || missing+=(uidmap)
  command -v slirp4netns >/dev/null || missing+=(slirp4netns)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup-docker-rootless: installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
  fi
  # The package's rootful daemon is not wanted (and cannot start without systemd anyway).
  exit 0
fi

[ "$(id -u)" != 0 ] || { echo "setup-docker-rootless: run the user part as the engine user, not root" >&2; exit 1; }
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/run/user/$(id -u)}
run_dir=$XDG_RUNTIME_DIR/hpcdock-docker
data_root=${XDG_DATA_HOME:-$HOME/.local/share}/hpcdock-docker
sock=$run_dir/docker.sock
export DOCKER_HOST=unix://$sock
pidfile=$run_dir/rootlesskit.pid
mkdir -p "$run_dir" "$data_root"

docker_cli() { command docker "$@"; }
flags=(--no-new-privileges)

stop_daemon() {
  pid=$(cat "$pidfile" 2>/dev/null || true)
  # only the rootlesskit this script started (a stale pid file may name another process by now)
  if [ -n "$pid" ] && grep -q rootlesskit "/proc/$pid/cmdline" 2>/dev/null && kill "$pid"; then
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    echo "stopped"
  fi
  rm -f "$pidfile"
}

if [ "${1:-}" = --stop ]; then
  stop_daemon
  exit 0
fi

dockerd_pid=$(cat "$run_dir/dockerd.pid" 2>/dev/null || true)
fresh_store=$run_dir/started-without-local-networks  # see below, where the daemon starts
if docker_cli info >/dev/null 2>&1 && [ -n "$dockerd_pid" ]; then
  if ! tr '\0' ' ' <"/proc/$dockerd_pid/cmdline" 2>/dev/null | grep -q -- "${flags[*]}"; then
    echo "setup-docker-rootless: restarting dockerd with ${flags[*]}" >&2
    stop_daemon >/dev/null
  elif [ ! -e "$fresh_store" ]; then
    echo "setup-docker-rootless: restarting dockerd without its local network store" >&2
    stop_daemon >/dev/null
  fi
fi

if ! docker_cli info >/dev/null 2>&1; then
  command -v dockerd >/dev/null && command -v rootlesskit >/dev/null || {
    echo "setup-docker-rootless: docker.io/rootlesskit missing; run once as root: $0 --system" >&2; exit 1; }
  # A dockerd stopped uncleanly (killed, the machine reset) while a task used a swarm-scoped
  # bridge network keeps a stale copy of that network in its local network store and then rejects
  # every task on it: "network <id> exists" (moby#37087). That store holds only node-local
  # networks, which dockerd and the Swarm engine make again, so a daemon started here starts
  # without it.
  rm -f "$data_root/network/files/local-kv.db" && touch "$fresh_store"
  # dockerd-rootless.sh re-execs itself inside rootlesskit; the daemon's own state goes under
  # run_dir (exec-root, pid file) and data_root, so it never touches a system Docker.
  setsid nohup /usr/share/docker.io/contrib/dockerd-rootless.sh \
      "${flags[@]}" --host "$DOCKER_HOST" --data-root "$data_root" --exec-root "$run_dir/exec" \
      --pidfile "$run_dir/dockerd.pid" >"$run_dir/dockerd.log" 2>&1 </dev/null &
  echo $! >"$pidfile"
  for _ in $(seq 1 120); do
    docker_cli info >/dev/null 2>&1 && break
    sleep 0.5
  done
  docker_cli info >/dev/null 2>&1 || {
    echo "setup-docker-rootless: dockerd did not come up; log:" >&2; tail -20 "$run_dir/dockerd.log" >&2; exit 1; }
fi

if [ "$(docker_cli info --format '{{.Swarm.LocalNodeState}}')" != active ]; then
  docker_cli swarm init --advertise-addr 127.0.0.1 --listen-addr 127.0.0.1:2377 >/dev/null
fi

ENGINE=docker "$(dirname "$0")/build-test-image.sh" "$image" >/dev/null
echo "$DOCKER_HOST"
