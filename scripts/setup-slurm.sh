#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, for the Slurm engine's tests and benchmarks
# (`make test` / `make bench` run it as root). Installs Debian's slurm-wlm and munge when missing,
# writes a minimal configuration (this machine's cores and memory as the one node's CPUs and
# memory, no GPU gres; partitions main, the default, and spare), and starts munged, slurmctld
# and slurmd by hand: these machines have no systemd. Jobs run as whoever submits them (the engine user). Idempotent: daemons that answer
# are reused, and a configuration that did not change is not rewritten. Ends when `sinfo` shows
# the node idle, or fails saying why, with the end of each daemon's log.
#
#   scripts/setup-slurm.sh           set up and start (or reuse)
#   scripts/setup-slurm.sh --stop    stop the three daemons this script started
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "setup-slurm: run as root (sudo $0)" >&2; exit 1; }

conf_dir=/etc/slurm
conf=$conf_dir/slurm.conf
state=/var/spool/slurmctld     # the controller's saved state (jobs, ids)
spool=/var/spool/slurmd        # the node daemon's spool (batch scripts)
logs=/var/log/slurm
run=/run/slurm                 # pid files
munge_run=/run/munge
node=$(hostname -s)

stop_pidfile() {  # stop the daemon a pid file names, only when it still is that daemon
  local pidfile=$1 name=$2 pid
  pid=$(cat "$pidfile" 2>/dev/null || true)
  if [ -n "$pid" ] && grep -q "$name" "/proc/$pid/cmdline" 2>/dev/null; then
    kill "$pid" && echo "setup-slurm: stopped $name ($pid)"
  fi
  rm -f "$pidfile"
}

if [ "${1:-}" = --stop ]; then
  stop_pidfile $run/slurmd.pid slurmd
  stop_pidfile $run/slurmctld.pid slurmctld
  stop_pidfile $munge_run/munged.pid munged
  exit 0
fi

missing=()
for p in slurm-wlm munge; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup-slurm: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

id slurm >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin slurm
install -d -o slurm -g slurm -m 0755 "$state" "$logs" "$run"
install -d -m 0755 "$spool"

# The node: this machine's cores and (a little less than) its memory, as slurmd itself counts them.
cpus=$(nproc --all)
mem_mib=$(awk '/^MemTotal:/ { print int($2 / 1024) }' /proc/meminfo)
real_mem=$(( mem_mib * 95 / 100 ))  # slurmd refuses a node whose RealMemory exceeds what it finds

new_conf=$(mktemp)
trap 'rm -f "$new_conf"' EXIT
cat >"$new_conf" <<EOF
# Written by hpcdock's scripts/setup-slurm.sh: a single-node cluster for tests and benchmarks.
ClusterName=hpcdock
SlurmctldHost=$node
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=$state
SlurmdSpoolDir=$spool
SlurmctldPidFile=$run/slurmctld.pid
SlurmdPidFile=$run/slurmd.pid
SlurmctldLogFile=$logs/slurmctld.log
SlurmdLogFile=$logs/slurmd.log
# No systemd and cgroup v1 without delegation here: track a job's processes by their parents
# and bind no tasks to cores (Slurm's cgroup plugins need a cgroup tree of their own).
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# A job that asks for no memory gets its CPUs' share of the node's, not the whole node's (the
# default, which lets one job at a time run on a node whatever its CPUs).
DefMemPerCPU=$(( real_mem / cpus ))
# No accounting database: hpcdock reads exit codes from the exit-status file its node runner
# writes (sacct is only its fallback where a site has slurmdbd).
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
# Scheduling latency, which decides a short task's cost (a default config ran 20 trivial jobs
# in 28 s here):
# - sched_min_interval=0: the main scheduler may run again right away instead of waiting
#   2 s (its default) after each pass; each submit and each job end triggers a pass, so a
#   job whose CPU is freed starts within milliseconds instead of at the next periodic pass.
# - defer is NOT set: with defer, a submitted job waits for the next pass instead of being
#   started by sbatch's own RPC when a CPU is free.
# - default_queue_depth=1000: a pass looks at the whole queue (the benchmark queues 100).
# - sched_interval=5: the periodic pass, a safety net only, every 5 s instead of 60 s.
# - bf_interval=5: the backfill scheduler (which starts jobs the main pass skipped) every 5 s
#   instead of 30 s.
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,default_queue_depth=1000,sched_interval=5,bf_interval=5
# Finished jobs stay visible to squeue/scontrol for 5 minutes (the default); with no accounting
# database that is where hpcdock looks when an exit-status file is missing.
MinJobAge=300
# A canceled job's processes get SIGTERM, then SIGKILL after KillWait: hpcdock's node runner
# stops and removes the task's container on SIGTERM, which takes a second or two.
KillWait=15
# Controller and node daemon are on one host: messages are answered in milliseconds, and a
# short timeout makes a daemon that died show up in seconds rather than in 10.
MessageTimeout=5
SlurmctldTimeout=30
SlurmdTimeout=30
# Node registration with the configured CPUs and memory, not those found at start-up (the
# node must not be drained when the kernel reports slightly less memory).
SlurmdParameters=config_overrides
NodeName=$node CPUs=$cpus RealMemory=$real_mem State=UNKNOWN
PartitionName=main Nodes=$node Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF

changed=0
if ! cmp -s "$new_conf" "$conf"; then
  install -m 0644 "$new_conf" "$conf"
  changed=1
fi
# Debian's packages read /etc/slurm/cgroup.conf only with cgroup plugins, which are not used.

# munge: one key for the (single) node; Debian's postinst usually made it already.
if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null || \
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 "$munge_run"
install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge

alive() {  # pid file names a live process of that name
  local pid
  pid=$(cat "$1" 2>/dev/null || true)
  [ -n "$pid" ] && grep -q "$2" "/proc/$pid/cmdline" 2>/dev/null
}

fail() {
  echo "setup-slurm: $*" >&2
  for f in $logs/slurmctld.log $logs/slurmd.log /var/log/munge/munged.log; do
    [ -f "$f" ] && { echo "--- last lines of $f" >&2; tail -15 "$f" >&2; }
  done
  exit 1
}

if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged --force 2>/dev/null || fail "munged did not start"
  for _ in $(seq 1 50); do munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  munge -n </dev/null | unmunge >/dev/null 2>&1 || fail "munge credentials do not round-trip"
  echo "setup-slurm: started munged"
fi

if [ "$changed" = 1 ] && alive $run/slurmctld.pid slurmctld; then
  echo "setup-slurm: slurm.conf changed; restarting the daemons"
  stop_pidfile $run/slurmd.pid slurmd
  stop_pidfile $run/slurmctld.pid slurmctld
  sleep 1
fi
if ! alive $run/slurmctld.pid slurmctld; then
  # -i: ignore saved state that no longer matches the configuration (a changed node, say).
  /usr/sbin/slurmctld -i || fail "slurmctld did not start"
  echo "setup-slurm: started slurmctld"
fi
if ! alive $run/slurmd.pid slurmd; then
  /usr/sbin/slurmd || fail "slurmd did not start"
  echo "setup-slurm: started slurmd"
fi

# Wait for the node to register and come up idle (or mixed/allocated: jobs of an earlier run).
node_state() { sinfo --noheader --nodes="$node" --format=%T 2>/dev/null | head -1; }
for _ in $(seq 1 120); do
  case "$(node_state)" in
    idle|mixed|allocated|completing) break ;;
    down*|drain*|fail*) scontrol update nodename="$node" state=resume 2>/dev/null || true ;;
  esac
  sleep 0.25
done
st=$(node_state)
case "$st" in
  idle|mixed|allocated|completing) ;;
  *) fail "node $node is '${st:-not listed}' after 30 s, not idle (sinfo: $(sinfo 2>&1 | tr '\n' ' '))" ;;
esac
# A second partition on the same node, never the default, for the engine tests of per-partition
# capabilities. Made at run time rather than in slurm.conf: a configuration without it (an older
# checkout of this script) neither loses it nor restarts the daemons under other users' jobs, and
# an extra partition changes nothing for jobs that do not name it. A restarted slurmctld may have
# dropped it; each run makes it again when it is missing.
if ! scontrol show partition spare >/dev/null 2>&1; then
  scontrol create PartitionName=spare Nodes="$node" Default=NO MaxTime=INFINITE State=UP OverSubscribe=NO \
    || fail "cannot create the partition spare"
  echo "setup-slurm: made partition spare on $node"
fi
echo "setup-slurm: ok (node $node: $cpus CPUs, ${real_mem} MiB, state $st; slurm $(sinfo --version | awk '{print $2}'))"
