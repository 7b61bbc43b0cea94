#!/usr/bin/env bash
# A one-node SLURM cluster on this machine for tests/slurm: munged, slurmctld and slurmd, every
# file (config, state, spool, logs, pids, munge socket) under one directory, reachable on
# loopback only (the node and the controller are addressed as 127.0.0.1).
#
#   bash .ci/slurm.sh start     # idempotent: a cluster already up is left as it is
#   bash .ci/slurm.sh status    # exit 0 when sinfo answers
#   bash .ci/slurm.sh stop      # idempotent: stops only the daemons this script started
#
# Needs root and Debian's packages: apt-get install -y slurmctld slurmd slurm-client munge.
# The clients (sbatch, squeue, scontrol) find the cluster through SLURM_CONF; after `start`:
#   export SLURM_CONF=$NEMO_CRAFT_SLURM_DIR/slurm.conf     (default dir: /tmp/nemo_craft_slurm)
# tests/slurm looks there by itself when SLURM_CONF is unset.
#
# cred_expire=10 (AuthInfo): a requeued job waits this long (default 120 s) before it may start again.
set -euo pipefail
DIR=${NEMO_CRAFT_SLURM_DIR:-/tmp/nemo_craft_slurm}
CONF=$DIR/slurm.conf
NODE=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024 / 2)}' /proc/meminfo)   # half the machine, for the jobs
CTLD_PORT=${NEMO_CRAFT_SLURMCTLD_PORT:-6817}
SLURMD_PORT=${NEMO_CRAFT_SLURMD_PORT:-6818}

running() {  # running PIDFILE: the process the pid file names is alive
  [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

write_conf() {
  mkdir -p "$DIR"/{state,spool,log,munge}
  chown munge:munge "$DIR/munge"
  chmod 755 "$DIR/munge"
  cat > "$CONF" <<EOF
# written by .ci/slurm.sh: a one-node cluster on loopback
ClusterName=nemo-craft-ci
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket,cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
JobRequeue=1
# bind the address the host name resolves to (checked to be loopback by start), not every address
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
KillWait=30
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=batch Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
  local addr
  addr=$(getent hosts "$NODE" | awk '{print $1; exit}')
  if [[ "$addr" != 127.* && "$addr" != ::1 ]]; then
    echo "slurm: host name $NODE resolves to '$addr', not loopback; the daemons would listen on it" >&2
    return 1
  fi
  write_conf
  if ! running "$DIR/munge/munged.pid"; then
    su -s /bin/sh munge -c "/usr/sbin/munged --socket=$DIR/munge/munge.socket --pid-file=$DIR/munge/munged.pid \
      --log-file=$DIR/munge/munged.log --seed-file=$DIR/munge/munged.seed"
  fi
  running "$DIR/slurmctld.pid" || /usr/sbin/slurmctld -f "$CONF"
  running "$DIR/slurmd.pid" || /usr/sbin/slurmd -f "$CONF"
  for _ in $(seq 60); do
    if SLURM_CONF=$CONF sinfo -h -o %t 2>/dev/null | grep -qx idle; then
      echo "slurm: up (SLURM_CONF=$CONF)"
      return 0
    fi
    sleep 1
  done
  echo "slurm: the node did not become idle in 60 s; logs in $DIR/log" >&2
  SLURM_CONF=$CONF sinfo >&2 || true
  return 1
}

stop() {
  local pidfile
  for pidfile in "$DIR/slurmd.pid" "$DIR/slurmctld.pid" "$DIR/munge/munged.pid"; do
    if running "$pidfile"; then
      kill "$(cat "$pidfile")"
      for _ in $(seq 30); do running "$pidfile" || break; sleep 1; done
    fi
    rm -f "$pidfile"
  done
  echo "slurm: stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) SLURM_CONF=$CONF sinfo ;;
  *) echo "usage: bash .ci/slurm.sh start|stop|status (got '${1:-}')" >&2; exit 2 ;;
esac
