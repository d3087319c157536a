#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for the SLURM tests (tests/workflow/test_slurm.py).
#
#   bash tests/slurm/cluster.sh start    # install (Debian munge + slurm-wlm daemons) if missing, configure,
#                                        # start, wait until the node is idle; idempotent
#   bash tests/slurm/cluster.sh status   # daemons and sinfo
#   bash tests/slurm/cluster.sh stop     # stop only the daemons this script started (pids in $STATE)
#
# Why it looks like this:
# - Accounting is off (no slurmdbd), so `sacct` fails: Snakemake's SLURM plugin must use
#   `slurm-status-command: squeue` (set in workflow/profiles/slurm), and MinJobAge keeps finished jobs
#   visible to squeue long enough for the plugin's status checks.
# - The node is declared as a small GPU node (8 CPUs, 64 GB, two stand-in `gpu` GRES;
#   SlurmdParameters=config_overrides) so that the requests in workflow/profiles/slurm are schedulable
#   unchanged. Nothing is enforced (no cgroups): the jobs run on this machine's cores and on CPU.
# - The cluster is system-wide; the tests use their own working directory and job names.
# Needs root (CI runs as root). Knobs: MASS_SLURM_CPUS, MASS_SLURM_MEM_MB, MASS_SLURM_PARTITION.
set -euo pipefail

ACTION="${1:-status}"
NODE="$(hostname -s)"
CPUS="${MASS_SLURM_CPUS:-8}"
MEM_MB="${MASS_SLURM_MEM_MB:-64000}"
PARTITION="${MASS_SLURM_PARTITION:-debug}"
STATE=/run/mass-slurm          # pid files of the daemons *this script* started
CONF=/etc/slurm/slurm.conf
MUNGE_PID=/run/munge/munged.pid
CTLD_PID=/run/slurm/slurmctld.pid
SLURMD_PID=/run/slurm/slurmd.pid

log() { echo "[cluster.sh $(date +%H:%M:%S)] $*"; }
die() { echo "[cluster.sh] ERROR: $*" >&2; exit 1; }

running() {  # running PIDFILE PROGRAM: the pid file names a live process of that program
    local pid
    [ -s "$1" ] || return 1
    pid=$(cat "$1")
    kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "$2"
}

install_packages() {
    local missing="" p
    for p in munge slurmctld slurmd slurm-client; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
    done
    [ -z "$missing" ] && return
    log "installing:$missing"
    # keep the packages' postinst from starting services we do not track
    local policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; policy=1
    fi
    ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1 || apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing </dev/null
    [ -n "$policy" ] && rm -f /usr/sbin/policy-rc.d
    return 0
}

write_config() {  # sets CONF_CHANGED=1 when slurm.conf or gres.conf changed
    local tmp
    tmp=$(mktemp)
    cat >"$tmp" <<EOF
# written by tests/slurm/cluster.sh: one node, no accounting, no cgroups
ClusterName=masstest
SlurmctldHost=${NODE}(127.0.0.1)
AuthType=auth/munge
SlurmUser=slurm
SlurmdUser=root
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=${CTLD_PID}
SlurmdPidFile=${SLURMD_PID}
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
GresTypes=gpu
DefMemPerCPU=1000
ReturnToService=2
MinJobAge=600
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MailProg=/bin/true
NodeName=${NODE} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=${MEM_MB} Gres=gpu:2 State=UNKNOWN
PartitionName=${PARTITION} Nodes=${NODE} Default=YES MaxTime=INFINITE State=UP
EOF
    mkdir -p /etc/slurm
    CONF_CHANGED=0
    if ! cmp -s "$tmp" "$CONF"; then install -m 0644 "$tmp" "$CONF"; CONF_CHANGED=1; fi
    # two stand-in GPUs (empty files: SLURM needs a device path per GPU, nothing opens them)
    touch "$STATE/gpu0" "$STATE/gpu1"
    echo "NodeName=${NODE} Name=gpu File=$STATE/gpu[0-1]" >"$tmp"
    if ! cmp -s "$tmp" /etc/slurm/gres.conf; then install -m 0644 "$tmp" /etc/slurm/gres.conf; CONF_CHANGED=1; fi
    rm -f "$tmp"
}

start_daemon() {  # start_daemon NAME PIDFILE COMMAND...: start unless running, record it as ours
    local name=$1 pidfile=$2 i
    shift 2
    if running "$pidfile" "$name"; then log "$name already running (pid $(cat "$pidfile"))"; return; fi
    log "starting $name"
    "$@"
    for i in $(seq 1 50); do running "$pidfile" "$name" && break; sleep 0.2; done
    running "$pidfile" "$name" || die "$name did not start"
    cp "$pidfile" "$STATE/$name.pid"
}

stop_ours() {  # stop_ours NAME: stop the daemon only if this script started it (same pid still alive)
    local f="$STATE/$1.pid" pid i
    [ -s "$f" ] || return 0
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "$1"; then
        log "stopping $1 (pid $pid)"
        kill "$pid"
        for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    fi
    rm -f "$f"
}

do_start() {
    [ "$(id -u)" -eq 0 ] || die "must run as root"
    install_packages
    mkdir -p "$STATE" /run/munge /var/lib/munge /var/log/munge /run/slurm /var/log/slurm \
        /var/spool/slurmctld /var/spool/slurmd
    [ -s /etc/munge/munge.key ] || mungekey -c -f -k /etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key /run/munge /var/lib/munge /var/log/munge
    chmod 0400 /etc/munge/munge.key
    chown slurm:slurm /run/slurm /var/log/slurm /var/spool/slurmctld
    start_daemon munged "$MUNGE_PID" runuser -u munge -- /usr/sbin/munged

    write_config
    if [ "$CONF_CHANGED" = 1 ]; then  # a changed config needs fresh daemons; stop only ours
        stop_ours slurmd; stop_ours slurmctld
        running "$CTLD_PID" slurmctld && die "slurmctld (pid $(cat $CTLD_PID)) was not started here; stop it first"
    fi
    start_daemon slurmctld "$CTLD_PID" /usr/sbin/slurmctld
    start_daemon slurmd "$SLURMD_PID" /usr/sbin/slurmd -N "$NODE"

    local i st=""
    for i in $(seq 1 120); do
        st=$(sinfo -h -n "$NODE" -o %T 2>/dev/null | head -1 || true)
        case "$st" in
            idle|mixed|allocated|completing) break ;;
            drain*|down*) scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true ;;
        esac
        sleep 0.5
    done
    case "$st" in idle|mixed|allocated|completing) ;; *) tail -5 /var/log/slurm/slurmd.log >&2; die "node $st" ;; esac
    log "ready: partition $PARTITION, node $NODE ($st)"
}

do_stop() {
    stop_ours slurmd
    stop_ours slurmctld
    stop_ours munged
}

do_status() {
    local n
    for n in munged:$MUNGE_PID slurmctld:$CTLD_PID slurmd:$SLURMD_PID; do
        if running "${n#*:}" "${n%%:*}"; then
            echo "${n%%:*}: running (pid $(cat "${n#*:}"))$([ -s "$STATE/${n%%:*}.pid" ] && echo ', started here')"
        else
            echo "${n%%:*}: not running"
        fi
    done
    sinfo 2>&1 || true
}

case "$ACTION" in
    start) do_start ;;
    stop) do_stop ;;
    status) do_status ;;
    *) die "usage: $0 start|stop|status" ;;
esac
