#!/usr/bin/env bash
# slurm-local.sh: a real single-node Slurm (slurmctld + slurmd + a private munged) on
# loopback, for the Slurm executor's integration test (tests/slurm.rs) and for trying
# `goosepipe run --executor slurm` on one machine.
#
#   scripts/slurm-local.sh up     install if missing (Debian packages), write the config,
#                                 start the daemons, wait until the node is idle
#   scripts/slurm-local.sh down   cancel leftover jobs, stop the daemons this script
#                                 started (by their pid files), remove the folder
#   scripts/slurm-local.sh env    print `export SLURM_CONF=...` (eval it)
#   scripts/slurm-local.sh status
#
# Every command is idempotent. Everything (config, state, spool, logs, pids, munge key and
# socket) lives under $GOOSEPIPE_SLURM_DIR (default /tmp/goosepipe-slurm); nothing is written
# to /etc except by apt itself. Needs root for apt-get and slurmd.
#
# Knobs: GOOSEPIPE_SLURM_DIR, GOOSEPIPE_SLURM_CTLD_PORT (6817), GOOSEPIPE_SLURM_SLURMD_PORT
# (6818), GOOSEPIPE_SLURM_CPUS (nproc), GOOSEPIPE_SLURM_MEM_MB (80% of RAM),
# GOOSEPIPE_SLURM_GPUS (2 placeholder GPUs; 0 for none), GOOSEPIPE_SLURM_KEEP=1 (down keeps
# the logs).
#
# Accounting (on unless GOOSEPIPE_SLURM_ACCOUNTING=0 at `up`): also installs MariaDB and slurmdbd
# (Debian packages, ~15 s), runs a private MariaDB on 127.0.0.1:GOOSEPIPE_SLURM_DB_PORT
# (3307; loopback only, no grant tables: a throwaway test database) and slurmdbd on
# GOOSEPIPE_SLURM_DBD_PORT (6819), and registers the cluster, so `sacct` answers as on
# real sites. `down` stops them too.
#
# Tested on Debian 12 (bookworm): slurm 22.05.8, munge 0.5.15.
set -euo pipefail

DIR=${GOOSEPIPE_SLURM_DIR:-/tmp/goosepipe-slurm}
CTLD_PORT=${GOOSEPIPE_SLURM_CTLD_PORT:-6817}
SLURMD_PORT=${GOOSEPIPE_SLURM_SLURMD_PORT:-6818}
CPUS=${GOOSEPIPE_SLURM_CPUS:-$(nproc)}
# Advertise 80% of the machine's memory: jobs asking for goosepipe's default --mem fit,
# and a node never claims more than it has (slurmd would drain it).
MEM_MB=${GOOSEPIPE_SLURM_MEM_MB:-$(awk '/^MemTotal:/ { printf "%d", $2 / 1024 * 0.8 }' /proc/meminfo)}
ACCOUNTING=${GOOSEPIPE_SLURM_ACCOUNTING:-1}
# With accounting, slurmctld forgets ended jobs after 5 s, as busy sites do: their final
# states then come from sacct alone. Without it, 10 minutes (scontrol's memory is all).
MIN_JOB_AGE=${GOOSEPIPE_SLURM_MIN_JOB_AGE:-$( (( ACCOUNTING )) && echo 5 || echo 600 )}
DB_PORT=${GOOSEPIPE_SLURM_DB_PORT:-3307}
DBD_PORT=${GOOSEPIPE_SLURM_DBD_PORT:-6819}
# GPUs that are not there (placeholder devices, see configure): jobs can ask for and
# get --gres=gpu:N, so GPU requests are tested on machines without GPUs. 0 declares none.
GPUS=${GOOSEPIPE_SLURM_GPUS:-2}
NODE=localnode
CONF=$DIR/slurm.conf
SOCK=$DIR/munge/munge.socket
export SLURM_CONF=$CONF

say() { printf 'slurm-local: %s\n' "$*" >&2; }
fail() { say "error: $*"; exit 1; }

# until_ok SECONDS CMD...: retry CMD every 0.1 s until it succeeds or time runs out.
until_ok() {
  local deadline=$(( $(date +%s) + $1 )); shift
  until "$@" >/dev/null 2>&1; do
    (( $(date +%s) < deadline )) || return 1
    sleep 0.1
  done
}

running() { # running PIDFILE
  [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

# The Debian packages that provide what `up` runs and are missing here: Slurm and munge
# always, slurmdbd and MariaDB's server tools with accounting.
missing_packages() {
  local b
  for b in slurmctld slurmd sbatch squeue scontrol scancel munged mungekey; do
    command -v "$b" >/dev/null || { echo slurmctld slurmd slurm-client munge; break; }
  done
  if (( ACCOUNTING )); then
    command -v slurmdbd >/dev/null || echo slurmdbd
    for b in mariadb-install-db mariadbd mariadb-admin; do
      command -v "$b" >/dev/null || { echo mariadb-server; break; }
    done
  fi
}

install() {
  local packages
  packages=$(missing_packages | tr '\n' ' ')
  [[ -n ${packages// /} ]] || return 0
  [[ $(id -u) == 0 ]] || fail "missing: $packages(Debian packages); installing them needs root"
  say "installing ${packages}from Debian packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Without recommends: 8 packages instead of the 43 of the slurm-wlm metapackage for
  # Slurm itself. The packages' own services are not started (no systemd here) and
  # never used: `up` runs private daemons on loopback ports.
  # shellcheck disable=SC2086 # one word per package
  apt-get install -y -qq --no-install-recommends $packages >/dev/null
}

configure() {
  mkdir -p "$DIR"/{state,spool,log,run,munge}
  # munged refuses a socket folder that is not executable by all, and a readable key.
  chmod 755 "$DIR" "$DIR/munge"
  [[ -s $DIR/munge/munge.key ]] || mungekey --create --keyfile="$DIR/munge/munge.key"
  chmod 400 "$DIR/munge/munge.key"
  cat >"$CONF.tmp" <<EOF
# Written by goosepipe scripts/slurm-local.sh: one node on loopback, root daemons.
ClusterName=goosepipe
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$SOCK
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
# No cgroups in containers: plain process tracking, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# No slurmdbd, so no sacct: the executor falls back to squeue + scontrol.
JobAcctGatherType=jobacct_gather/none
$( if (( ACCOUNTING )); then
     # AccountingStoragePass names the munge socket for talking to slurmdbd.
     printf 'AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=localhost\nAccountingStoragePort=%s\nAccountingStoragePass=%s\n' "$DBD_PORT" "$SOCK"
   else
     echo "AccountingStorageType=accounting_storage/none"
   fi )
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.log
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# Start a dependent about 1 s after its parent instead of about 3 s.
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
# Cancel afterok dependents of a failed job (they would stay pending forever).
DependencyParameters=kill_invalid_depend
# Keep finished jobs visible to scontrol for 10 minutes.
MinJobAge=$MIN_JOB_AGE
ReturnToService=2
MpiDefault=none
$( (( GPUS > 0 )) && echo "GresTypes=gpu" )
NodeName=$NODE NodeHostname=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB $( (( GPUS > 0 )) && echo "Gres=gpu:$GPUS" ) State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
# A partition with a 10-minute limit: requests over it are refused before submission.
PartitionName=short Nodes=$NODE MaxTime=00:10:00 State=UP
EOF
  if (( GPUS > 0 )); then
    # Slurm 22.05 drops GPUs without a File=: each gets a character device, a copy of
    # /dev/null's (jobs never open it; task/none confines nothing).
    mkdir -p "$DIR/dev"
    local g
    for (( g = 0; g < GPUS; g++ )); do
      [[ -c $DIR/dev/gpu$g ]] || mknod "$DIR/dev/gpu$g" c 1 3
    done
    printf "AutoDetect=off\nNodeName=%s Name=gpu File=%s/dev/gpu[0-%s]\n" "$NODE" "$DIR" "$((GPUS - 1))" >"$DIR/gres.conf"
  else
    rm -f "$DIR/gres.conf"
  fi
  mv "$CONF.tmp" "$CONF"
  if (( ACCOUNTING )); then
    # slurmdbd reads slurmdbd.conf beside slurm.conf and wants it private.
    cat >"$DIR/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$SOCK
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=root
StorageLoc=goosepipe_acct
EOF
    chmod 600 "$DIR/slurmdbd.conf"
  fi
}

db_ok() { mariadb-admin --socket="$DIR/db/mysqld.sock" ping; }
dbd_ok() { sacctmgr -n list cluster format=cluster; }

# MariaDB (private datadir, loopback TCP, no grant tables) and slurmdbd, before slurmctld.
accounting_up() {
  if [[ ! -d $DIR/db/data/mysql ]]; then
    mkdir -p "$DIR/db"
    mariadb-install-db --no-defaults --datadir="$DIR/db/data" --user=root \
      --auth-root-authentication-method=normal --skip-test-db >"$DIR/log/db-install.log" 2>&1 \
      || fail "mariadb-install-db failed (see $DIR/log/db-install.log)"
  fi
  if ! running "$DIR/db/mysqld.pid"; then
    nohup mariadbd --no-defaults --datadir="$DIR/db/data" --socket="$DIR/db/mysqld.sock" \
      --port="$DB_PORT" --bind-address=127.0.0.1 --pid-file="$DIR/db/mysqld.pid" --user=root \
      --skip-grant-tables --log-error="$DIR/log/mariadb.log" >/dev/null 2>&1 &
  fi
  until_ok 30 db_ok || fail "MariaDB is not answering (see $DIR/log/mariadb.log)"
  running "$DIR/run/slurmdbd.pid" || slurmdbd || fail "slurmdbd did not start"
  until_ok 30 dbd_ok || fail "slurmdbd is not answering (see $DIR/log/slurmdbd.log)"
  [[ -n $(sacctmgr -n list cluster format=cluster where cluster=goosepipe) ]] \
    || sacctmgr -i add cluster goosepipe >/dev/null || fail "cannot register the cluster with slurmdbd"
}

node_idle() { [[ $(sinfo -h -n "$NODE" -o %t 2>/dev/null) == idle* ]]; }
ctld_up() { scontrol ping 2>/dev/null | grep -q "is UP"; }
munge_ok() { munge -n -S "$SOCK" | unmunge -S "$SOCK"; }

up() {
  install
  configure
  if ! running "$DIR/munge/munged.pid"; then
    rm -f "$SOCK" "$SOCK.lock"
    munged --socket="$SOCK" --key-file="$DIR/munge/munge.key" \
      --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" \
      --seed-file="$DIR/munge/munged.seed"
  fi
  until_ok 10 munge_ok || fail "munged is not answering (see $DIR/munge/munged.log)"
  if (( ACCOUNTING )); then accounting_up; fi
  running "$DIR/run/slurmctld.pid" || slurmctld -f "$CONF" || fail "slurmctld did not start"
  until_ok 30 ctld_up || fail "slurmctld is not answering (see $DIR/log/slurmctld.log)"
  running "$DIR/run/slurmd.pid" || slurmd -f "$CONF" -N "$NODE" || fail "slurmd did not start"
  until_ok 60 node_idle || { sinfo -N -l >&2 || true; fail "the node never became idle (see $DIR/log)"; }
  say "up; clients need: export SLURM_CONF=$CONF"
}

down() {
  if running "$DIR/run/slurmctld.pid"; then
    # Cancel what is left so no job outlives slurmd.
    scancel --full --partition=debug 2>/dev/null || true
    scancel --full --partition=short 2>/dev/null || true
    until_ok 10 sh -c '[ -z "$(squeue -h -o %i)" ]' || true
  fi
  # SIGTERM them all at once (each takes 1-2 s), wait up to 10 s, then SIGKILL.
  local f pids=()
  for f in "$DIR/run/slurmd.pid" "$DIR/run/slurmctld.pid" "$DIR/run/slurmdbd.pid" "$DIR/db/mysqld.pid" "$DIR/munge/munged.pid"; do
    if running "$f"; then
      pids+=("$(cat "$f")")
      kill "$(cat "$f")" 2>/dev/null || true
    fi
  done
  local p i
  for i in $(seq 100); do
    local alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    (( alive )) || break
    sleep 0.1
  done
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  if [[ ${GOOSEPIPE_SLURM_KEEP:-0} == 1 ]]; then
    rm -f "$DIR"/run/*.pid "$DIR/munge/munged.pid" "$DIR/db/mysqld.pid"
  else
    rm -rf "$DIR"
  fi
  say "down"
}

case ${1:-} in
  up) up ;;
  down) down ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  status) scontrol ping; sinfo; squeue ;;
  *) sed -n '2,19p' "$0" >&2; exit 2 ;;
esac
