#!/usr/bin/env bash
# A real single-node Slurm on this host, for tests/test_slurm.py (and by hand).
#
#   tests/slurm/local_slurm.sh start           # install if missing, start, wait idle
#   eval "$(tests/slurm/local_slurm.sh env)"   # SLURM_CONF for sinfo, sbatch, snakemake
#   tests/slurm/local_slurm.sh status
#   tests/slurm/local_slurm.sh stop            # only the daemons this script started
#
# One node (this host: CPUs and RealMemory from `slurmd -C`, no GPUs) in two
# partitions, `cpu` (default) and `gpu`, the names profiles/slurm/config.yaml
# uses. No cgroups or systemd needed (proctrack/linuxproc, task/none). No
# accounting daemon, so `sacct` does not work: use --slurm-status-command
# squeue (MinJobAge keeps finished jobs in squeue for an hour).
#
# Everything lives under $RMFLOW_SLURM_DIR (default /tmp/rmflow-slurm): config,
# a munge key and munged socket of its own (a system munged is left alone),
# state, logs and pid files; /etc/slurm/slurm.conf, if absent, becomes a link
# to that config while the cluster runs (a job's `srun` finds it there). Ports: $RMFLOW_SLURM_PORT (slurmctld, default
# 6817) and the next one (slurmd). If a slurmctld or slurmd that this script
# did not start is running, `start` refuses rather than touch it.
#
# Exit codes: 0 ok; 1 failure; 2 usage; 3 refused (another Slurm is running or
# a port is taken); 4 cannot run here (not root, or not installed and no apt-get).
set -euo pipefail

DIR=${RMFLOW_SLURM_DIR:-/tmp/rmflow-slurm}
CTLD_PORT=${RMFLOW_SLURM_PORT:-6817}
SLURMD_PORT=$((CTLD_PORT + 1))
CONF=$DIR/etc/slurm.conf
# Where Slurm's commands look without SLURM_CONF. The jobstep plugin clears
# SLURM_CONF before its `srun` inside a job, so the config must be found here:
# `start` links it to ours (only if nothing is there) and `stop` removes the link.
SYSTEM_CONF=${RMFLOW_SLURM_SYSTEM_CONF:-/etc/slurm/slurm.conf}
SOCKET=$DIR/munge/munge.socket
ACTIVE_STATES=PD,R,CG,S,RQ,RS,RH,CF,SO,ST,SI

log() { printf 'local_slurm: %s\n' "$*" >&2; }
die() {
  local code=$1
  shift
  log "$*"
  exit "$code"
}

pidfile() { echo "$DIR/run/$1.pid"; }

# The pid of a daemon this script started, if it still runs: the pid file's
# process must be that daemon, with our directory on its command line.
our_pid() {
  local file pid
  file=$(pidfile "$1")
  [ -s "$file" ] || return 1
  pid=$(tr -dc '0-9' <"$file")
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$DIR/" || return 1
  echo "$pid"
}

# Pids of processes named $1 that this script did not start.
foreign_pids() {
  local mine pid out=()
  mine=$(our_pid "$1" || true)
  for pid in $(pgrep -x "$1" || true); do
    [ "$pid" = "$mine" ] || out+=("$pid")
  done
  echo "${out[*]:-}"
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

ensure_installed() {
  local cmd missing=() t0=$SECONDS
  for cmd in munged slurmctld slurmd sbatch; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || die 4 "not installed: ${missing[*]}; installing needs root (apt-get)"
  command -v apt-get >/dev/null 2>&1 || die 4 "not installed: ${missing[*]}; no apt-get"
  log "installing slurm-wlm munge (apt-get)"
  local install=(apt-get install -y -qq --no-install-recommends slurm-wlm munge)
  if ! DEBIAN_FRONTEND=noninteractive "${install[@]}" >/dev/null; then
    apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive "${install[@]}" >/dev/null ||
      die 4 "apt-get install slurm-wlm munge failed"
  fi
  log "installed in $((SECONDS - t0)) s"
}

write_config() {
  local host spec
  host=$(hostname -s)
  # first line of `slurmd -C`: "NodeName=h CPUs=2 Boards=1 ... RealMemory=24105"
  spec=$(slurmd -C | head -n 1)
  case $spec in
  NodeName=*CPUs=*RealMemory=*)
    spec=$(sed 's/^NodeName=[^ ]* //; s/ UpTime=.*//' <<<"$spec")
    ;;
  *) die 1 "unexpected 'slurmd -C' output: $spec" ;;
  esac
  mkdir -p "$DIR"/{etc,run,log,munge,state/ctld,state/d}
  chmod 700 "$DIR/munge" "$DIR/etc"
  cat >"$CONF.new" <<CONFIG
# Written by tests/slurm/local_slurm.sh: one node, this host, for tests.
ClusterName=rmflow-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire + 1 s is also how long a requeued job waits (default 120 s)
AuthInfo=socket=$SOCKET,cred_expire=20
StateSaveLocation=$DIR/state/ctld
SlurmdSpoolDir=$DIR/state/d
SlurmctldPidFile=$(pidfile slurmctld)
SlurmdPidFile=$(pidfile slurmd)
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups or systemd in a container: track job processes by parent pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobContainerType=job_container/none
MpiDefault=none
SwitchType=switch/none
# several jobs share the node, by cores and memory
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# no slurmdbd (sacct does not work); squeue shows finished jobs for an hour
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=3600
# a restarted node comes back by itself; SIGKILL 10 s after SIGTERM
ReturnToService=2
KillWait=10
NodeName=$host $spec NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=cpu Nodes=$host Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$host MaxTime=INFINITE State=UP
CONFIG
  chmod 644 "$CONF.new"
  if cmp -s "$CONF.new" "$CONF"; then
    rm -f "$CONF.new"
  else
    mv "$CONF.new" "$CONF"
    CONF_CHANGED=1
  fi
  if [ ! -s "$DIR/etc/munge.key" ]; then
    (umask 077 && dd if=/dev/urandom of="$DIR/etc/munge.key" bs=1024 count=1 status=none)
  fi
  chmod 600 "$DIR/etc/munge.key"
}

wait_for() { # seconds description command...
  local n=$1 what=$2 i
  shift 2
  for ((i = 0; i < n * 2; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  log "timed out after ${n}s waiting for $what"
  return 1
}

munge_ok() { munge -n -S "$SOCKET" | unmunge -S "$SOCKET"; }
ctld_ok() { SLURM_CONF=$CONF scontrol ping | grep -q "is UP"; }
node_idle() { SLURM_CONF=$CONF sinfo -h -N -o '%T' | grep -qE '^(idle|mixed|allocated)$'; }
no_active_jobs() { [ -z "$(SLURM_CONF=$CONF squeue -h -t "$ACTIVE_STATES" -o %A)" ]; }

start_munged() {
  our_pid munged >/dev/null && return 0
  munged --force --socket="$SOCKET" --key-file="$DIR/etc/munge.key" \
    --pid-file="$(pidfile munged)" --log-file="$DIR/log/munged.log" \
    --seed-file="$DIR/munge/munged.seed"
  wait_for 20 munged munge_ok || die 1 "munged did not start; see $DIR/log/munged.log"
}

start_slurmctld() {
  if our_pid slurmctld >/dev/null; then
    if [ -n "${CONF_CHANGED:-}" ]; then
      log "config changed: scontrol reconfigure"
      SLURM_CONF=$CONF scontrol reconfigure
    fi
    return 0
  fi
  slurmctld -f "$CONF"
  wait_for 30 slurmctld ctld_ok ||
    die 1 "slurmctld did not start; see $DIR/log/slurmctld.log"
}

start_slurmd() {
  our_pid slurmd >/dev/null || slurmd -f "$CONF" -N "$(hostname -s)"
  wait_for 60 "the node to be idle" node_idle ||
    die 1 "node not idle: $(SLURM_CONF=$CONF sinfo -N -l 2>&1); see $DIR/log/slurmd.log"
}

cmd_start() {
  local t0=$SECONDS d foreign port
  ensure_installed
  for d in slurmctld slurmd; do
    foreign=$(foreign_pids "$d")
    [ -z "$foreign" ] ||
      die 3 "refusing: a $d this script did not start is running (pid $foreign); stop it or use that cluster"
  done
  if [ -e "$SYSTEM_CONF" ] || [ -L "$SYSTEM_CONF" ]; then
    [ "$(readlink "$SYSTEM_CONF")" = "$CONF" ] ||
      die 3 "refusing: $SYSTEM_CONF exists (another Slurm's config?); jobs would read it instead of $CONF"
  fi
  if ! our_pid slurmctld >/dev/null; then
    for port in "$CTLD_PORT" "$SLURMD_PORT"; do
      if port_in_use "$port"; then
        die 3 "refusing: port $port is in use; set RMFLOW_SLURM_PORT to a free pair"
      fi
    done
  fi
  [ "$(id -u)" = 0 ] || die 4 "the daemons run as root here (SlurmUser=root); run as root"
  write_config
  mkdir -p "$(dirname "$SYSTEM_CONF")"
  ln -sfn "$CONF" "$SYSTEM_CONF"
  start_munged
  start_slurmctld
  start_slurmd
  log "up in $((SECONDS - t0)) s; config, state and logs under $DIR"
  SLURM_CONF=$CONF sinfo >&2
  echo "export SLURM_CONF=$CONF"
}

cmd_stop() {
  local d pid jobs i
  # jobs first (every job of this cluster is a test job), so none outlives slurmd
  if our_pid slurmctld >/dev/null && our_pid munged >/dev/null; then
    jobs=$(SLURM_CONF=$CONF squeue -h -t "$ACTIVE_STATES" -o %A 2>/dev/null || true)
    if [ -n "$jobs" ]; then
      log "cancelling jobs: $(tr '\n' ' ' <<<"$jobs")"
      # shellcheck disable=SC2086 # a list of job ids
      SLURM_CONF=$CONF scancel $jobs || true
      wait_for 30 "the jobs to end" no_active_jobs || true
    fi
  fi
  for d in slurmd slurmctld munged; do
    if pid=$(our_pid "$d"); then
      log "stopping $d (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
      for ((i = 0; i < 40; i++)); do
        [ -d "/proc/$pid" ] || break
        sleep 0.25
      done
      if [ -d "/proc/$pid" ]; then
        log "$d (pid $pid) ignored SIGTERM for 10 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
      fi
    fi
    rm -f "$(pidfile "$d")"
  done
  if [ -L "$SYSTEM_CONF" ] && [ "$(readlink "$SYSTEM_CONF")" = "$CONF" ]; then
    rm -f "$SYSTEM_CONF"
  fi
}

cmd_status() {
  local d pid rc=0
  for d in munged slurmctld slurmd; do
    if pid=$(our_pid "$d"); then
      echo "$d: running (pid $pid)"
    else
      echo "$d: not running (none started by this script)"
      rc=1
    fi
  done
  [ $rc != 0 ] || SLURM_CONF=$CONF sinfo
  return $rc
}

case ${1:-} in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
env) echo "export SLURM_CONF=$CONF" ;;
*) die 2 "usage: $0 start|stop|status|env" ;;
esac
