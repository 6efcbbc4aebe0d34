#!/usr/bin/env bash
# Stop the single-node SLURM cluster that up.sh started: cancel whatever jobs are left, then stop
# slurmd, slurmctld, slurmdbd, MariaDB and munged by their pid files, each waited for (SIGKILL
# after a timeout), so that no process is left behind. The state directory (logs, accounting
# database) stays, for the next up.sh. Idempotent: fine when nothing is running.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/common.sh"

[[ $EUID -eq 0 ]] || { echo "down.sh: run as root" >&2; exit 1; }

# SIGTERM daemon $1, wait up to $2 s for it to exit, then SIGKILL it.
stop() {
  local name=$1 timeout=$2 pid deadline
  pid=$(daemon_pid "$name") || { rm -f "${PIDFILE[$name]}"; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + timeout))
  while running "$pid"; do
    if ((SECONDS >= deadline)); then
      log "$name (pid $pid) still up after ${timeout}s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      deadline=$((SECONDS + 5))
    fi
    sleep 0.2
  done
  rm -f "${PIDFILE[$name]}"
  log "stopped $name"
}

# Whether up.sh wrote this machine's slurm.conf: only then are slurmstepd processes ours to wait
# for or end (a real node's are never touched).
ours() { [[ -f $SLURM_CONF_FILE ]] && grep -qF "$MARKER" "$SLURM_CONF_FILE"; }
stepds() {  # live slurmstepd processes (zombies not counted), when they are ours
  local pid
  ours || return 0
  for pid in $(pgrep -x slurmstepd || true); do running "$pid" && echo "$pid"; done
}

# Jobs first, while slurmctld and slurmd can still end them cleanly (KillWait is 5 s): every job
# on this private test cluster is a leftover now.
if daemon_pid slurmctld >/dev/null && command -v squeue >/dev/null; then
  jobs=$(timeout 10 squeue -h -o %A 2>/dev/null | tr '\n' ' ') || jobs=
  if [[ -n ${jobs// /} ]]; then
    log "cancelling jobs: $jobs"
    # shellcheck disable=SC2086  # one id per word
    timeout 10 scancel $jobs 2>/dev/null || true
    # up to 20 s, until no job is pending, running or completing and each job's slurmstepd,
    # which outlives its job by a moment to report to slurmd, is gone too
    for _ in $(seq 100); do
      [[ -z $(timeout 10 squeue -h -o %A 2>/dev/null) && -z $(stepds) ]] && break
      sleep 0.2
    done
  fi
fi

stop slurmd 15
stop slurmctld 20
stop slurmdbd 20
stop mariadbd 60
stop munged 10

# A job whose slurmd died mid-job (or a job that would not end) leaves its slurmstepd and the job's
# processes running: end each such slurmstepd and everything under it.
descendants() { local c; for c in $(pgrep -P "$1" || true); do echo "$c"; descendants "$c"; done; }
for pid in $(stepds); do
  tree=$(descendants "$pid" | tr '\n' ' ')
  log "killing leftover slurmstepd $pid ${tree:+and the processes under it: $tree}"
  # shellcheck disable=SC2086  # one pid per word
  kill -KILL "$pid" $tree 2>/dev/null || true
done
log "cluster down"
