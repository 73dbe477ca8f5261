#!/usr/bin/env bash
# Grid Engine beside Slurm: a real Son of Grid Engine 8.1.9 as a second cluster account on the
# test bed's sshd (run as root; idempotent; up.sh calls it last, down.sh calls it with --down).
#
#   sge.sh            unpack Debian's gridengine packages under /var/lib/hpcnn-testbed/sge (NOT
#                     installed: gridengine-client owns /usr/bin/qsub and apt would remove
#                     Slurm's Torque wrappers), start sge_qmaster + sge_execd, queue all.q with
#                     2 slots, parallel environment smp, consumable gpu=2, user sgeuser whose
#                     login profile puts the SGE bin folder first on PATH (as sites do with
#                     profile.d or modules); adds TESTBED_SGE_* to testbed.env
#   sge.sh --down     stop sge_execd and sge_qmaster
#   sge.sh --purge    also remove the SGE folder and the sgeuser account
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/lib.sh"

SGE_VAR=$TB_VAR/sge
SGE_DEBS=$SGE_VAR/debs
SGE_PKG=$SGE_VAR/pkg                 # the packages' files, unpacked
SGE_LIB=$SGE_PKG/usr/lib/gridengine  # the real binaries (Debian's /usr/bin ones are wrappers)
SGE_ROOT=$SGE_VAR/root
SGE_CELL=default
SGE_COMMON=$SGE_ROOT/$SGE_CELL/common
SGE_BIN=$SGE_ROOT/bin/lx-amd64       # what the cluster account's PATH gets
SGE_SPOOL=$SGE_VAR/spool
SGE_QMASTER_PORT=6444
SGE_EXECD_PORT=6445
SGE_USER=sgeuser
SGE_HOME=/home/$SGE_USER
SGE_VERSION=8.1.9
SGE_PACKAGES=(gridengine-common gridengine-client gridengine-master gridengine-exec)
# The unpacked binaries' shared libraries (what gridengine-client/-master/-exec depend on).
SGE_LIBS=(libjemalloc2 libdb5.3 libhwloc15 libmunge2 libtirpc3 libssl3)
QMASTER_PID=$SGE_SPOOL/qmaster/qmaster.pid
NODE=$(hostname -s)

log() { echo "[testbed sge] $*"; }
die() { echo "[testbed sge] ERROR: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root"

export SGE_ROOT SGE_CELL SGE_QMASTER_PORT SGE_EXECD_PORT

# execd spools under the name the qmaster resolves for it ("localhost" where 127.0.0.1
# reverse-resolves so), not necessarily $NODE.
execd_pidfile() {
    local f
    for f in "$SGE_SPOOL"/execd/*/execd.pid; do
        pid_alive "$f" sge_execd && { echo "$f"; return 0; }
    done
    echo "$SGE_SPOOL/execd/$NODE/execd.pid"
}

stop_daemons() {
    stop_pidfile "$(execd_pidfile)" sge_execd
    stop_pidfile "$QMASTER_PID" sge_qmaster
}

forget_env() {  # tests find the SGE account through these lines: gone while it is not up
    local tmp
    [ -f "$ENV_FILE" ] || return 0
    tmp=$(mktemp)
    grep -v '^TESTBED_SGE_' "$ENV_FILE" >"$tmp" || true
    install -m 644 "$tmp" "$ENV_FILE"
    rm -f "$tmp"
}

case "${1:-}" in
    "") ;;
    --down)
        forget_env
        stop_daemons
        exit 0 ;;
    --purge)
        forget_env
        stop_daemons
        rm -rf "$SGE_VAR"
        [ -L /usr/lib/gridengine ] && [ "$(readlink /usr/lib/gridengine)" = "$SGE_LIB" ] \
            && rm -f /usr/lib/gridengine
        if id "$SGE_USER" >/dev/null 2>&1; then
            log "removing user $SGE_USER and its home"
            userdel -r "$SGE_USER" 2>/dev/null || userdel "$SGE_USER" || true
            rm -rf "$SGE_HOME"
        fi
        rm -f "$AUTH_DIR/$SGE_USER"
        exit 0 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) die "unknown argument: $1 (use --down, --purge or nothing)" ;;
esac

[ -s "$CLIENT_KEY.pub" ] || die "$CLIENT_KEY.pub missing: run up.sh (it calls this script last)"

forget_env  # not up until the end

# ---------------------------------------------------------------- packages (unpacked)
missing=()
for p in "${SGE_LIBS[@]}"; do
    if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]; then
        missing+=("$p")
    fi
done
export DEBIAN_FRONTEND=noninteractive
if [ ${#missing[@]} -gt 0 ]; then
    log "installing libraries: ${missing[*]}"
    apt-get update -q >/dev/null || die "apt-get update failed"
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed"
fi
if [ ! -x "$SGE_LIB/sge_qmaster" ] || [ ! -x "$SGE_LIB/sge_execd" ]; then
    install -d -m 755 "$SGE_DEBS"
    rm -rf "$SGE_PKG" "$SGE_DEBS"/*.deb
    log "downloading ${SGE_PACKAGES[*]}"
    # _apt cannot write into a root-only folder; download as root (apt warns, harmlessly).
    if ! (cd "$SGE_DEBS" && apt-get download -q "${SGE_PACKAGES[@]}" >/dev/null 2>&1); then
        apt-get update -q >/dev/null || die "apt-get update failed"
        (cd "$SGE_DEBS" && apt-get download -q "${SGE_PACKAGES[@]}" >/dev/null 2>&1) \
            || die "apt-get download ${SGE_PACKAGES[*]} failed"
    fi
    for deb in "$SGE_DEBS"/*.deb; do
        dpkg-deb -x "$deb" "$SGE_PKG"
    done
    [ -x "$SGE_LIB/sge_qmaster" ] || die "unpacked packages lack $SGE_LIB/sge_qmaster"
    log "unpacked into $SGE_PKG"
else
    log "packages already unpacked in $SGE_PKG"
fi

# The binaries load their spooling library from a compiled-in /usr/lib/gridengine/%s.so:
# that one path points into the unpacked tree (nothing of Slurm's lives there).
if [ "$(readlink /usr/lib/gridengine 2>/dev/null)" != "$SGE_LIB" ]; then
    [ -e /usr/lib/gridengine ] && [ ! -L /usr/lib/gridengine ] \
        && die "/usr/lib/gridengine exists (Debian's gridengine installed?): remove it first"
    ln -sfn "$SGE_LIB" /usr/lib/gridengine
    log "linked /usr/lib/gridengine -> $SGE_LIB"
fi

# ---------------------------------------------------------------- cell
install -d -m 755 "$SGE_ROOT" "$SGE_ROOT/$SGE_CELL" "$SGE_COMMON" "$SGE_BIN" "$SGE_SPOOL" \
    "$SGE_SPOOL/qmaster" "$SGE_SPOOL/qmaster/job_scripts" "$SGE_SPOOL/execd"
# The user commands, as a site's $SGE_ROOT/bin/<arch> holds them; daemons stay out of PATH.
for tool in qacct qalter qconf qdel qhold qhost qmod qping qquota qrls qselect qstat qsub; do
    ln -sfn "$SGE_LIB/$tool" "$SGE_BIN/$tool"
done

write_file() {  # write_file DEST CONTENT: atomically, 644
    local tmp
    tmp=$(mktemp "$1.XXXXXX")
    printf '%s\n' "$2" >"$tmp"
    chmod 644 "$tmp"
    mv -f "$tmp" "$1"
}

write_file "$SGE_COMMON/bootstrap" "# Written by hpcnn tests/testbed/sge.sh -- test bed only.
admin_user              none
default_domain          none
ignore_fqdn             true
spooling_method         berkeleydb
spooling_lib            libspoolb
spooling_params         $SGE_SPOOL/spooldb
binary_path             $SGE_LIB
qmaster_spool_dir       $SGE_SPOOL/qmaster
security_mode           none
listener_threads        2
worker_threads          2
scheduler_threads       1"
write_file "$SGE_COMMON/act_qmaster" "$NODE"
# 127.0.0.1 reverse-resolves to "localhost" here: without the alias execd is refused
# ("client IP resolved to host name localhost").
write_file "$SGE_COMMON/host_aliases" "$NODE localhost"
write_file "$SGE_COMMON/settings.sh" "SGE_ROOT=$SGE_ROOT; export SGE_ROOT
SGE_CELL=$SGE_CELL; export SGE_CELL
SGE_QMASTER_PORT=$SGE_QMASTER_PORT; export SGE_QMASTER_PORT
SGE_EXECD_PORT=$SGE_EXECD_PORT; export SGE_EXECD_PORT
case \":\$PATH:\" in *\":$SGE_BIN:\"*) ;; *) PATH=$SGE_BIN:\$PATH; export PATH ;; esac"

if [ ! -e "$SGE_SPOOL/spooldb/.hpcnn-initialised" ]; then
    log "initialising the spool and the global configuration"
    rm -rf "$SGE_SPOOL/spooldb"
    install -d -m 755 "$SGE_SPOOL/spooldb"
    conf=$(mktemp)
    centry=$(mktemp -d)
    sed -e "s|^execd_spool_dir .*|execd_spool_dir        $SGE_SPOOL/execd|" \
        -e "s|^mailer .*|mailer                 /bin/true|" \
        -e "s|^load_report_time .*|load_report_time       00:00:05|" \
        -e "s|^min_uid .*|min_uid                100|" \
        -e "s|^min_gid .*|min_gid                100|" \
        "$SGE_PKG/usr/share/gridengine/default-configuration" >"$conf"
    cp "$SGE_PKG/usr/share/gridengine/util/resources/centry/"* "$centry/"
    # A consumable "gpu" as many sites define it (requested as -l gpu=N).
    printf '%s\n' "name gpu" "shortcut gpu" "type INT" "relop <=" "requestable YES" \
        "consumable YES" "default 0" "urgency 0" >"$centry/gpu"
    "$SGE_LIB/spoolinit" berkeleydb libspoolb "$SGE_SPOOL/spooldb" init >/dev/null
    "$SGE_LIB/spooldefaults" configuration "$conf"
    "$SGE_LIB/spooldefaults" complexes "$centry"
    "$SGE_LIB/spooldefaults" usersets "$SGE_PKG/usr/share/gridengine/util/resources/usersets"
    "$SGE_LIB/spooldefaults" managers root
    rm -rf "$conf" "$centry"
    touch "$SGE_SPOOL/spooldb/.hpcnn-initialised"
fi

# ---------------------------------------------------------------- daemons
logtail() {
    local f
    for f in "$@"; do
        [ -f "$f" ] || continue
        echo "----- tail $f -----" >&2
        tail -n 30 "$f" >&2
    done
}
if pid_alive "$QMASTER_PID" sge_qmaster; then
    log "sge_qmaster already running (pid $(cat "$QMASTER_PID"))"
else
    log "starting sge_qmaster"
    rm -f "$QMASTER_PID"
    setsid -f "$SGE_LIB/sge_qmaster" >>"$SGE_SPOOL/qmaster.stdout" 2>&1 </dev/null
    for i in $(seq 1 100); do
        pid_alive "$QMASTER_PID" sge_qmaster && break
        sleep 0.1
    done
    pid_alive "$QMASTER_PID" sge_qmaster \
        || { logtail "$SGE_SPOOL/qmaster.stdout" "$SGE_SPOOL/qmaster/messages"; die "sge_qmaster did not start"; }
fi
ok=
for i in $(seq 1 100); do
    if "$SGE_LIB/qstat" -f >/dev/null 2>&1; then ok=1; break; fi
    sleep 0.2
done
[ -n "$ok" ] || { logtail "$SGE_SPOOL/qmaster/messages"; die "sge_qmaster does not answer"; }

# ---------------------------------------------------------------- cluster setup (idempotent)
qconf() { "$SGE_LIB/qconf" "$@"; }
from_file() {  # from_file OPTION CONTENT: qconf -A?/-M? with a temporary file
    local tmp rc=0
    tmp=$(mktemp)
    printf '%s\n' "$2" >"$tmp"
    qconf "$1" "$tmp" >/dev/null 2>&1 || rc=$?
    rm -f "$tmp"
    return $rc
}
qconf -sh 2>/dev/null | grep -qx "$NODE" || qconf -ah "$NODE" >/dev/null 2>&1
qconf -ss 2>/dev/null | grep -qx "$NODE" || qconf -as "$NODE" >/dev/null 2>&1
# Scheduling every 2 s instead of 15 s: submit to running in seconds, as on the Slurm side.
sched=$(mktemp)
qconf -ssconf | sed -e 's|^schedule_interval .*|schedule_interval                 0:0:2|' \
    -e 's|^flush_submit_sec .*|flush_submit_sec                  1|' \
    -e 's|^flush_finish_sec .*|flush_finish_sec                  1|' >"$sched"
qconf -Msconf "$sched" >/dev/null 2>&1
rm -f "$sched"

EXEC_HOST="hostname $NODE
load_scaling NONE
complex_values gpu=2
user_lists NONE
xuser_lists NONE
projects NONE
xprojects NONE
usage_scaling NONE
report_variables NONE"
if qconf -se "$NODE" >/dev/null 2>&1; then
    qconf -mattr exechost complex_values gpu=2 "$NODE" >/dev/null 2>&1 || true
else
    from_file -Ae "$EXEC_HOST"
fi

HGRP="group_name @allhosts
hostlist $NODE"
qconf -shgrp @allhosts >/dev/null 2>&1 || from_file -Ahgrp "$HGRP"

PE="pe_name            smp
slots              999
user_lists         NONE
xuser_lists        NONE
start_proc_args    NONE
stop_proc_args     NONE
allocation_rule    \$pe_slots
control_slaves     FALSE
job_is_first_task  TRUE
urgency_slots      min
accounting_summary FALSE
qsort_args         NONE"
qconf -sp smp >/dev/null 2>&1 || from_file -Ap "$PE"

QUEUE="qname                 all.q
hostlist              @allhosts
seq_no                0
load_thresholds       NONE
suspend_thresholds    NONE
nsuspend              1
suspend_interval      00:05:00
priority              0
min_cpu_interval      00:05:00
processors            UNDEFINED
qtype                 BATCH INTERACTIVE
ckpt_list             NONE
pe_list               smp
rerun                 FALSE
slots                 2
tmpdir                /tmp
shell                 /bin/bash
prolog                NONE
epilog                NONE
shell_start_mode      posix_compliant
starter_method        NONE
suspend_method        NONE
resume_method         NONE
terminate_method      NONE
notify                00:00:10
owner_list            NONE
user_lists            NONE
xuser_lists           NONE
subordinate_list      NONE
complex_values        NONE
projects              NONE
xprojects             NONE
calendar              NONE
initial_state         default
s_rt                  INFINITY
h_rt                  INFINITY
s_cpu                 INFINITY
h_cpu                 INFINITY
s_fsize               INFINITY
h_fsize               INFINITY
s_data                INFINITY
h_data                INFINITY
s_stack               INFINITY
h_stack               INFINITY
s_core                INFINITY
h_core                INFINITY
s_rss                 INFINITY
h_rss                 INFINITY
s_vmem                INFINITY
h_vmem                INFINITY"
if qconf -sq all.q >/dev/null 2>&1; then
    from_file -Mq "$QUEUE"
else
    from_file -Aq "$QUEUE"
fi

if pid_alive "$(execd_pidfile)" sge_execd; then
    log "sge_execd already running (pid $(cat "$(execd_pidfile)"))"
else
    log "starting sge_execd"
    setsid -f "$SGE_LIB/sge_execd" >>"$SGE_SPOOL/execd.stdout" 2>&1 </dev/null
    for i in $(seq 1 100); do
        pid_alive "$(execd_pidfile)" sge_execd && break
        sleep 0.1
    done
    pid_alive "$(execd_pidfile)" sge_execd \
        || { logtail "$SGE_SPOOL/execd.stdout" "$SGE_SPOOL"/execd/*/messages; die "sge_execd did not start"; }
fi
log "waiting for all.q@$NODE to report"
ok=
for i in $(seq 1 60); do
    # The queue instance has a load value once execd reported; "-" before.
    if "$SGE_LIB/qstat" -f -q all.q 2>/dev/null | grep -E "^all.q@$NODE" | grep -qv -- ' -NA- '; then
        state=$("$SGE_LIB/qstat" -f -q all.q | awk -v q="all.q@$NODE" '$1 == q {print $6}')
        [ -z "$state" ] && { ok=1; break; }
        "$SGE_LIB/qmod" -c "all.q@$NODE" >/dev/null 2>&1 || true
        "$SGE_LIB/qmod" -e "all.q@$NODE" >/dev/null 2>&1 || true
    fi
    sleep 0.5
done
[ -n "$ok" ] || { "$SGE_LIB/qstat" -f >&2 || true; logtail "$SGE_SPOOL"/execd/*/messages "$SGE_SPOOL/qmaster/messages"; die "all.q@$NODE is not ready after 30 s"; }

# ---------------------------------------------------------------- cluster account
if ! id "$SGE_USER" >/dev/null 2>&1; then
    log "creating user $SGE_USER"
    useradd -m -s /bin/bash "$SGE_USER"
fi
if [ "$(getent shadow "$SGE_USER" | cut -d: -f2)" != "*" ]; then
    usermod -p '*' "$SGE_USER"  # a locked '!' password makes sshd (UsePAM no) refuse keys
fi
# This account stands for a cluster that runs Grid Engine only: its PATH gets /usr/bin
# without Slurm's client commands (installed machine-wide for hpcuser; /bin is /usr/bin here),
# or sbatch/squeue beside SGE's qstat would make the scheduler ambiguous.
NO_SLURM=$SGE_VAR/usr-bin
rm -rf "$NO_SLURM.new"
install -d -m 755 "$NO_SLURM.new"
hide=" $(dpkg -L slurm-client slurm-wlm-torque 2>/dev/null | sed -n 's|^/usr/bin/||p' | tr '\n' ' ') "
for f in /usr/bin/*; do
    case "$hide" in *" ${f##*/} "*) ;; *) ln -s "$f" "$NO_SLURM.new/" ;; esac
done
rm -rf "$NO_SLURM" && mv "$NO_SLURM.new" "$NO_SLURM"
# Login shells (bash -lc) read ~/.profile: the SGE settings first on PATH, as a site's
# profile.d or `module load sge` would do.
PROFILE="# Written by hpcnn tests/testbed/sge.sh: Grid Engine for this account.
PATH=/usr/local/bin:$NO_SLURM:/usr/sbin; export PATH
. $SGE_COMMON/settings.sh
if [ -n \"\$BASH_VERSION\" ] && [ -f \"\$HOME/.bashrc\" ]; then . \"\$HOME/.bashrc\"; fi"
tmp=$(mktemp)
printf '%s\n' "$PROFILE" >"$tmp"
install -m 644 -o "$SGE_USER" -g "$SGE_USER" "$tmp" "$SGE_HOME/.profile"
rm -f "$tmp"
rm -f "$SGE_HOME/.bash_profile" "$SGE_HOME/.bash_login"
install -m 644 "$CLIENT_KEY.pub" "$AUTH_DIR/$SGE_USER"

# ---------------------------------------------------------------- verify
SSH=(ssh -i "$CLIENT_KEY" -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes
     -o UserKnownHostsFile="$KNOWN_HOSTS" -o GlobalKnownHostsFile=/dev/null -o ConnectTimeout=10
     -p "$TB_PORT" "$SGE_USER@$TB_HOST")
log "verifying ssh login and a job as $SGE_USER"
out=$("${SSH[@]}" 'bash -lc "command -v qsub qstat sbatch squeue; qstat -help | head -n 1"' 2>&1) \
    || { echo "$out" >&2; die "ssh to $SGE_USER@$TB_HOST:$TB_PORT failed"; }
echo "$out" | sed 's/^/    /'
[ "$(echo "$out" | sed -n 1p)" = "$SGE_BIN/qsub" ] || die "qsub of $SGE_USER is not $SGE_BIN/qsub"
echo "$out" | grep -q -e /sbatch -e /squeue && die "Slurm's sbatch/squeue are on $SGE_USER's PATH"
echo "$out" | grep -q "^SGE $SGE_VERSION" || die "qstat -help does not say SGE $SGE_VERSION"
jobid=$("${SSH[@]}" 'bash -lc '"'"'mkdir -p ~/.testbed-verify && cd ~/.testbed-verify && rm -f tbverify.* && printf "echo testbed-ok\n" > verify.sh && qsub -terse -cwd -S /bin/bash -N tbverify verify.sh'"'"'' 2>&1) \
    || die "qsub failed: $jobid"
jobid=$(echo "$jobid" | tail -n 1 | tr -d '[:space:]')
[[ "$jobid" =~ ^[0-9]+$ ]] || die "qsub -terse did not print a job id: $jobid"
t0=$(date +%s)
out=
while [ $(( $(date +%s) - t0 )) -lt 60 ]; do
    out=$("${SSH[@]}" "cat ~/.testbed-verify/tbverify.o$jobid 2>/dev/null" || true)
    [ "$out" = testbed-ok ] && break
    sleep 0.5
done
[ "$out" = testbed-ok ] || { "$SGE_LIB/qstat" -j "$jobid" >&2 || true; die "job $jobid did not write testbed-ok in 60 s"; }
log "job $jobid ran in about $(( $(date +%s) - t0 )) s"

# ---------------------------------------------------------------- up
[ -f "$ENV_FILE" ] || die "$ENV_FILE missing: up.sh writes it before calling this script"
tmp=$(mktemp)
{
    grep -v '^TESTBED_SGE_' "$ENV_FILE" || true
    echo "TESTBED_SGE_USER=$SGE_USER"
    echo "TESTBED_SGE_HOME=$SGE_HOME"
    echo "TESTBED_SGE_ROOT=$SGE_ROOT"
    echo "TESTBED_SGE_BIN=$SGE_BIN"
} >"$tmp"
install -m 644 "$tmp" "$ENV_FILE"
rm -f "$tmp"
log "Grid Engine is up; $SGE_USER's facts added to $ENV_FILE"
