#!/usr/bin/env bash
# Stop the hpcnn test bed (run as root; idempotent).
#   down.sh          stop sshd, Grid Engine, slurmd, slurmctld; remove testbed.env (munged stays)
#   down.sh --purge  also remove Slurm and Grid Engine state/logs, sshd log, test-bed keys and
#                    config, /etc/slurm/{slurm,gres}.conf written by up.sh, hpcuser and sgeuser
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

log() { echo "[testbed down] $*"; }
die() { echo "[testbed down] ERROR: $*" >&2; exit 1; }

purge=
case "${1:-}" in
    "") ;;
    --purge) purge=1 ;;
    -h|--help) sed -n '2,5p' "$0"; exit 0 ;;
    *) die "unknown argument: $1 (use --purge or nothing)" ;;
esac
[ "$(id -u)" = 0 ] || die "must run as root"

# Gone first: nothing may think the test bed is up while it stops.
rm -f "$TB_ETC/testbed.env"


# Only the listener is stopped; open sessions end when their clients do.
stop_pidfile "$TB_VAR/sshd.pid" sshd
bash "$(dirname "${BASH_SOURCE[0]}")/sge.sh" "$([ -n "$purge" ] && echo --purge || echo --down)"
bash "$(dirname "${BASH_SOURCE[0]}")/twofactor.sh" "$([ -n "$purge" ] && echo --purge || echo --down)"
stop_pidfile "$SLURM_VAR/slurmd.pid" slurmd
stop_pidfile "$SLURM_VAR/slurmctld.pid" slurmctld

if [ -n "$purge" ]; then
    log "purging state, logs, keys and config"
    rm -rf "$TB_VAR" "$TB_ETC"
    for f in /etc/slurm/slurm.conf /etc/slurm/gres.conf; do
        if [ -f "$f" ] && grep -q 'hpcnn tests/testbed/up.sh' "$f"; then
            rm -f "$f"
        fi
    done
    if [ -f /etc/slurm/slurm.conf.pre-hpcnn-testbed ] && [ ! -e /etc/slurm/slurm.conf ]; then
        mv /etc/slurm/slurm.conf.pre-hpcnn-testbed /etc/slurm/slurm.conf
    fi
    if id "$TB_USER" >/dev/null 2>&1; then
        log "removing user $TB_USER and its home"
        userdel -r "$TB_USER" 2>/dev/null || userdel "$TB_USER" || true
        rm -rf "/home/$TB_USER"
    fi
fi
log "test bed is down"
