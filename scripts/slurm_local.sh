#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for the tests of `--executor slurm` (and to try it):
#   eval "$(bash scripts/slurm_local.sh start)"   # prints `export SLURM_CONF=...`
#   bash scripts/slurm_local.sh stop
# Needs Debian's slurm-wlm and munge (`apt-get install slurm-wlm munge`); no systemd: munged,
# slurmctld and slurmd are started as plain processes. The node has this machine's cores and
# memory; state, logs and spool live in $LUCIR_SLURM_DIR (default /tmp/lucir-slurm). A requeued job
# may start again 10 s after it stopped (cred_expire=10; Slurm's default is 120 s).
set -euo pipefail
DIR=${LUCIR_SLURM_DIR:-/tmp/lucir-slurm}
CONF="$DIR/slurm.conf"
cmd=${1:-start}

stop() {
  for pidfile in "$DIR/slurmd.pid" "$DIR/slurmctld.pid"; do
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
  done
  sleep 1
}

if [ "$cmd" = stop ]; then stop; exit 0; fi
[ "$cmd" = start ] || { echo "usage: $0 start|stop" >&2; exit 2; }
for tool in slurmctld slurmd munged sbatch; do
  command -v "$tool" >/dev/null || { echo "error: $tool not found; apt-get install slurm-wlm munge" >&2; exit 1; }
done
[ "$(id -u)" -eq 0 ] || { echo "error: run as root (the daemons run as root and munge)" >&2; exit 1; }

# munge: a key, its run folder, the daemon as the munge user
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
fi
mkdir -p /run/munge /var/log/munge /var/lib/munge && chown munge:munge /run/munge /var/log/munge /var/lib/munge
if ! munge -n >/dev/null 2>&1; then
  runuser -u munge -- munged
  for _ in $(seq 50); do munge -n >/dev/null 2>&1 && break; sleep 0.1; done
fi

stop
rm -rf "$DIR/state" "$DIR/spool"  # job ids start again from 1: each test uses its own submitit folder
mkdir -p "$DIR/state" "$DIR/spool"
NODE=$(hostname -s)
CPUS=$(nproc)
MEM=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
cat > "$CONF" <<CONF
ClusterName=lucir
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
MinJobAge=300
KillWait=5
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=local Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
export SLURM_CONF="$CONF"
slurmctld -f "$CONF"
slurmd -f "$CONF"
for _ in $(seq 100); do
  state=$(sinfo -h -o %t 2>/dev/null || true)
  case "$state" in idle*|mix*|alloc*) break ;; esac
  sleep 0.2
done
case "$(sinfo -h -o %t 2>/dev/null || true)" in
  idle*|mix*|alloc*) ;;
  *) echo "error: the local Slurm node did not come up (logs: $DIR/slurmctld.log, $DIR/slurmd.log)" >&2; exit 1 ;;
esac
echo "export SLURM_CONF=$CONF"
