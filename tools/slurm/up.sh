#!/usr/bin/env bash
# Start a single-node SLURM cluster on this machine for dropkit's tests and CI: munged, a private
# MariaDB, slurmdbd (so sacct, which submitit polls, knows every job), slurmctld and slurmd.
# Debian 12 as root, without systemd: each daemon is started here, in the background, with its pid
# file, log and data under $SLURM_STATE (default /tmp/dropkit-slurm). Missing packages are
# installed first. Idempotent: a daemon that is already up (by its pid file) is left alone.
# Stop it all with tools/slurm/down.sh.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/common.sh"
t0=$EPOCHREALTIME

die() { echo "up.sh: $*" >&2; exit 1; }
[[ $EUID -eq 0 ]] || die "run as root (it installs packages and starts daemons)"
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

# Wait up to $2 seconds until the command "${@:3}" succeeds; else show log $1's tail and fail.
wait_for() {
  local logfile=$1 timeout=$2 deadline
  shift 2
  deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      echo "up.sh: timed out after ${timeout}s waiting for: $*" >&2
      [[ -f $logfile ]] && tail -n 30 "$logfile" >&2
      exit 1
    fi
    sleep 0.2
  done
}

install -d -m 0755 "$STATE" "$STATE/log"

# --- packages ------------------------------------------------------------------------------------
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  t_install=$EPOCHREALTIME
  log "installing ${missing[*]} (log: $STATE/log/apt.log)"
  # Keep the maintainer scripts from starting the packages' own services (munge, mariadb with
  # its default datadir): the daemons are started below, with this cluster's configuration.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 0755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt_install() {
    apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$STATE/log/apt.log" 2>&1
  }
  # stale or absent package lists: refresh them once and retry
  if ! apt_install; then
    apt-get update -q >>"$STATE/log/apt.log" 2>&1
    apt_install || { tail -n 30 "$STATE/log/apt.log" >&2; exit 1; }
  fi
  log "packages installed in $(elapsed "$t_install") s"
fi

# --- configuration -------------------------------------------------------------------------------
# Refuse to overwrite a slurm configuration that this script did not write (a real cluster's).
for f in "$SLURM_CONF_FILE" "$SLURMDBD_CONF_FILE"; do
  if [[ -e $f ]] && ! grep -qF "$MARKER" "$f"; then
    die "$f exists and was not written by up.sh; not touching it"
  fi
done
# The node as slurmd sees it (name, CPUs, sockets, cores, RealMemory): a node configured with more
# than it has would be drained.
node=$(slurmd -C 2>/dev/null | grep -m1 '^NodeName=') || die "slurmd -C failed"
node=${node% UpTime=*}
node_name=${node#NodeName=}
node_name=${node_name%% *}
DB_PASS_FILE=$DB_DIR/.slurm-password
install -d -o mysql -g mysql -m 0750 "$DB_DIR"
# slurmdbd's MariaDB password, made once; the database only listens on 127.0.0.1 anyway
if [[ ! -s $DB_PASS_FILE ]]; then
  (umask 077 && od -An -N12 -tx1 /dev/urandom | tr -d ' \n' >"$DB_PASS_FILE")
fi
conf_changed=
render() {  # template $1 -> file $2 (mode $3), replaced only when its text changes
  local tmp
  tmp=$(mktemp "$2.XXXXXX")
  sed -e "s|@STATE@|$STATE|g" -e "s|@CLUSTER@|$CLUSTER|g" -e "s|@HOST@|$node_name|g" \
    -e "s|@NODE@|$node|g" -e "s|@PARTITION@|$PARTITION|g" -e "s|@DB_PORT@|$DB_PORT|g" \
    -e "s|@DB_PASS@|$(<"$DB_PASS_FILE")|g" "$HERE/$1" >"$tmp"
  chmod "$3" "$tmp"
  if cmp -s "$tmp" "$2"; then rm -f "$tmp"; else mv -f "$tmp" "$2" && conf_changed=1; fi
}
install -d -m 0755 "$CONF_DIR" "$STATE/ctld" "$STATE/spool"
render slurm.conf.in "$SLURM_CONF_FILE" 0644
render slurmdbd.conf.in "$SLURMDBD_CONF_FILE" 0600  # slurmdbd insists: it holds the DB password

# --- munge: authentication between all slurm daemons and commands --------------------------------
if [[ ! -s /etc/munge/munge.key ]]; then
  install -d -o munge -g munge -m 0700 /etc/munge
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
# the socket stays at munge's default path, where slurm's auth/munge looks for it
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 "$MUNGE_DIR"
if ! daemon_pid munged >/dev/null; then
  runuser -u munge -- munged --pid-file="${PIDFILE[munged]}" --log-file="$MUNGE_DIR/munged.log" \
    --seed-file="$MUNGE_DIR/munged.seed" </dev/null >>"$STATE/log/munged.out" 2>&1
fi
wait_for "$MUNGE_DIR/munged.log" 15 bash -c 'munge -n | unmunge'

# --- MariaDB: a private instance (own datadir, socket, port) for slurmdbd only --------------------
if [[ ! -d $DB_DIR/data/mysql ]]; then
  mariadb-install-db --no-defaults --user=mysql --datadir="$DB_DIR/data" --skip-test-db \
    --auth-root-authentication-method=socket >>"$STATE/log/mariadb.log" 2>&1
fi
if ! daemon_pid mariadbd >/dev/null; then
  # mariadbd has no daemon mode of its own: detach it in a session of its own; small buffers
  # and no performance schema keep it light on a small shared machine
  setsid mariadbd --no-defaults --user=mysql --datadir="$DB_DIR/data" --socket="$DB_SOCKET" \
    --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
    --pid-file="${PIDFILE[mariadbd]}" --innodb-buffer-pool-size=64M --innodb-log-file-size=48M \
    --innodb-lock-wait-timeout=900 --performance-schema=OFF --max-connections=40 \
    </dev/null >>"$STATE/log/mariadb.log" 2>&1 &
fi
mysql_root() { mariadb --no-defaults --socket="$DB_SOCKET" -uroot "$@"; }
wait_for "$STATE/log/mariadb.log" 60 mysql_root -e 'SELECT 1'
# slurmdbd connects over TCP to 127.0.0.1, hence the account's host
mysql_root --batch <<SQL
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$(<"$DB_PASS_FILE")';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
SQL

# --- slurmdbd, then the cluster's record in it ---------------------------------------------------
daemon_pid slurmdbd >/dev/null || slurmdbd </dev/null >>"$STATE/log/slurmdbd.out" 2>&1
wait_for "$STATE/log/slurmdbd.log" 60 sacctmgr -n list cluster
if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
  sacctmgr -i add cluster "$CLUSTER" >/dev/null  # also creates the root account and user
fi

# --- slurmctld and slurmd (both daemonize themselves) ---------------------------------------------
if daemon_pid slurmctld >/dev/null; then
  # already up: have it and slurmd reread a configuration that changed since they started
  [[ -z $conf_changed ]] || scontrol reconfigure
else
  slurmctld </dev/null >>"$STATE/log/slurmctld.out" 2>&1
fi
wait_for "$STATE/log/slurmctld.log" 60 scontrol ping
daemon_pid slurmd >/dev/null || slurmd </dev/null >>"$STATE/log/slurmd.out" 2>&1

# Ready when the node takes jobs. A node left down or drained by an earlier unclean stop is resumed.
node_ready() {
  local s
  s=$(sinfo -h -N -n "$node_name" -o %T 2>/dev/null) || return 1
  case $s in
    idle | mixed | allocated | completing) return 0 ;;
    down | drained | draining) scontrol update nodename="$node_name" state=resume 2>/dev/null ;;
  esac
  return 1
}
wait_for "$STATE/log/slurmd.log" 60 node_ready
wait_for "$STATE/log/slurmdbd.log" 30 sacct -n -X -o JobID
node_info=$(sinfo -h -N -n "$node_name" -o '%T, %c CPUs, %m MB')
log "cluster '$CLUSTER' up in $(elapsed "$t0") s: node $node_name ($node_info), state in $STATE"
