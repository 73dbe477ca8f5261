#!/usr/bin/env bash
# Bring up the hpcnn test bed on this machine (run as root; idempotent).
#
#   munged + slurmctld + slurmd (one node, 2 pretend GPUs, partitions gpu/short)
#   sshd on 127.0.0.1:2222 with its own config, logging every accepted connection
#   Unix user hpcuser (the "cluster account"), client key for the tests
#
# The last step writes /etc/hpcnn-testbed/testbed.env; its existence means "up".
# See tests/testbed/README.md.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
PACKAGES=(slurmctld slurmd slurm-client slurm-wlm-torque munge openssh-server rsync cron)

log() { echo "[testbed up] $*"; }
die() { echo "[testbed up] ERROR: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root"

NODE=$(hostname -s)
NCPU=$(nproc)
[ -n "$NODE" ] || die "hostname -s is empty"

# Not up until the very end.
rm -f "$ENV_FILE"


# install_if_changed CONTENT DEST MODE: writes DEST when its content differs;
# returns 0 when it changed.
install_if_changed() {
    local content=$1 dest=$2 mode=$3 tmp
    tmp=$(mktemp)
    printf '%s\n' "$content" >"$tmp"
    if [ -f "$dest" ] && cmp -s "$tmp" "$dest"; then
        rm -f "$tmp"
        return 1
    fi
    install -m "$mode" -o root -g root "$tmp" "$dest"
    rm -f "$tmp"
    log "wrote $dest"
    return 0
}

logtail() {
    local f
    for f in "$@"; do
        [ -f "$f" ] || continue
        echo "----- tail $f -----" >&2
        tail -n 30 "$f" >&2
    done
}

# ---------------------------------------------------------------- packages
missing=()
for p in "${PACKAGES[@]}"; do
    if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]; then
        missing+=("$p")
    fi
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing missing packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q || die "apt-get update failed"
    apt-get install -y -q --no-install-recommends "${missing[@]}" || die "apt-get install ${missing[*]} failed"
else
    log "packages present: ${PACKAGES[*]}"
fi

install -d -m 755 "$TB_ETC" "$TB_VAR" "$SLURM_VAR" "$SLURM_VAR/state" "$SLURM_VAR/spool" "$SLURM_ETC"

# ---------------------------------------------------------------- munge
if [ ! -s /etc/munge/munge.key ]; then
    log "creating munge key"
    install -d -o munge -g munge -m 700 /etc/munge
    if command -v mungekey >/dev/null; then
        mungekey --create --keyfile=/etc/munge/munge.key --force
    else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
fi
install -d -o munge -g munge -m 755 /run/munge
install -d -o munge -g munge -m 700 /var/lib/munge /var/log/munge
if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "munged already running"
else
    log "starting munged"
    su -s /bin/sh munge -c /usr/sbin/munged || die "munged failed to start (see /var/log/munge/munged.log)"
    ok=
    for i in $(seq 1 50); do
        if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then ok=1; break; fi
        sleep 0.1
    done
    [ -n "$ok" ] || { logtail /var/log/munge/munged.log; die "munge credentials do not work"; }
fi

# ---------------------------------------------------------------- slurm config
# Pretend GPUs need device files (without File= slurmd reports 0 GPUs and the
# node goes INVAL). /dev/tty1 and /dev/tty2 exist on a VM; in a container that
# lacks them, character devices made under $TB_VAR serve (tried: jobs get
# CUDA_VISIBLE_DEVICES=0,1). Plain files are the last resort: scheduling still
# works but jobs then get an EMPTY CUDA_VISIBLE_DEVICES.
if [ -c /dev/tty1 ] && [ -c /dev/tty2 ]; then
    GPU0=/dev/tty1
    GPU1=/dev/tty2
else
    GPU0=$TB_VAR/dev/gpu0
    GPU1=$TB_VAR/dev/gpu1
    install -d -m 755 "$TB_VAR/dev"
    for n in 0 1; do
        f=$TB_VAR/dev/gpu$n
        [ -c "$f" ] && continue
        rm -f "$f"
        if ! mknod "$f" c 4 $((n + 1)) 2>/dev/null; then
            log "warning: mknod not permitted; using a plain file $f (CUDA_VISIBLE_DEVICES will be empty in jobs)"
            touch "$f"
        fi
    done
fi

SLURM_CONF="# Written by hpcnn tests/testbed/up.sh -- test bed only, do not edit.
ClusterName=testbed
SlurmctldHost=$NODE(127.0.0.1)
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmUser=root
SlurmdUser=root
ReturnToService=2
MpiDefault=none
MailProg=/bin/true
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=2
KillWait=20
MinJobAge=600
InactiveLimit=0
SlurmdTimeout=300
StateSaveLocation=$SLURM_VAR/state
SlurmdSpoolDir=$SLURM_VAR/spool
SlurmctldPidFile=$SLURM_VAR/slurmctld.pid
SlurmdPidFile=$SLURM_VAR/slurmd.pid
SlurmctldLogFile=$SLURM_VAR/slurmctld.log
SlurmdLogFile=$SLURM_VAR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$NCPU RealMemory=8000 Gres=gpu:2 State=UNKNOWN
PartitionName=gpu Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=short Nodes=ALL Default=NO MaxTime=1 State=UP"

GRES_CONF="# Written by hpcnn tests/testbed/up.sh -- test bed only, do not edit.
AutoDetect=off
Name=gpu File=$GPU0
Name=gpu File=$GPU1"

if [ -f "$SLURM_ETC/slurm.conf" ] && ! grep -q 'hpcnn tests/testbed/up.sh' "$SLURM_ETC/slurm.conf"; then
    log "keeping a copy of the foreign $SLURM_ETC/slurm.conf as slurm.conf.pre-hpcnn-testbed"
    cp -n "$SLURM_ETC/slurm.conf" "$SLURM_ETC/slurm.conf.pre-hpcnn-testbed"
fi
slurm_changed=
install_if_changed "$SLURM_CONF" "$SLURM_ETC/slurm.conf" 644 && slurm_changed=1
install_if_changed "$GRES_CONF" "$SLURM_ETC/gres.conf" 644 && slurm_changed=1

# ---------------------------------------------------------------- slurm daemons
if [ -n "$slurm_changed" ]; then
    stop_pidfile "$SLURM_VAR/slurmd.pid" slurmd
    stop_pidfile "$SLURM_VAR/slurmctld.pid" slurmctld
fi

start_daemon() {  # start_daemon NAME: runs /usr/sbin/NAME -D detached (own session)
    local name=$1 i
    if pid_alive "$SLURM_VAR/$name.pid" "$name"; then
        log "$name already running (pid $(cat "$SLURM_VAR/$name.pid"))"
        return 0
    fi
    log "starting $name"
    setsid -f "/usr/sbin/$name" -D >>"$SLURM_VAR/$name.stdout" 2>&1 </dev/null
    for i in $(seq 1 100); do
        pid_alive "$SLURM_VAR/$name.pid" "$name" && return 0
        sleep 0.1
    done
    logtail "$SLURM_VAR/$name.stdout" "$SLURM_VAR/$name.log"
    die "$name did not start"
}
start_daemon slurmctld
for i in $(seq 1 100); do
    scontrol ping 2>/dev/null | grep -q 'is UP' && break
    sleep 0.1
done
scontrol ping 2>/dev/null | grep -q 'is UP' || { logtail "$SLURM_VAR/slurmctld.log"; die "slurmctld does not answer"; }
start_daemon slurmd

log "waiting for node $NODE to become idle"
state=
resumed=
for i in $(seq 1 60); do
    state=$(sinfo -h -N -n "$NODE" -o '%t' 2>/dev/null | head -n 1)
    case "$state" in
        idle|mix|alloc|comp) break ;;
        down|drain|drng|drain\*|down\*)
            # "down*" means not responding yet; give slurmd a few seconds first.
            if [ -z "$resumed" ] && { [ "${state%\*}" = "$state" ] || [ "$i" -gt 10 ]; }; then
                log "node is $state, resuming it"
                scontrol update nodename="$NODE" state=resume 2>/dev/null || true
                resumed=1
            fi ;;
    esac
    sleep 0.5
done
case "$state" in
    idle|mix|alloc|comp) log "node $NODE is $state" ;;
    *)
        sinfo -N -l >&2 || true
        scontrol show node "$NODE" >&2 || true
        logtail "$SLURM_VAR/slurmctld.log" "$SLURM_VAR/slurmd.log"
        die "node $NODE is '${state:-unknown}' after 30 s, not idle"
        ;;
esac

# ---------------------------------------------------------------- cluster account
if ! id "$TB_USER" >/dev/null 2>&1; then
    log "creating user $TB_USER"
    useradd -m -s /bin/bash "$TB_USER"
fi
# A locked password ('!') makes sshd with UsePAM=no refuse even key logins.
if [ "$(getent shadow "$TB_USER" | cut -d: -f2)" != "*" ]; then
    usermod -p '*' "$TB_USER"
fi
[ -d "$TB_HOME" ] || die "$TB_HOME missing"

if [ -d "$VENV" ]; then
    # Only touch what is not yet world-readable (the venv is large).
    find "$VENV" \( ! -perm -o+r -o \( -type d ! -perm -o+x \) \) -exec chmod a+rX {} + 2>/dev/null || true
    log "$VENV is world-readable"
else
    log "note: $VENV does not exist (the lead creates it); skipping"
fi

# ---------------------------------------------------------------- ssh keys
install -d -m 755 "$CLIENT_DIR" "$AUTH_DIR"
if [ ! -s "$HOST_KEY" ]; then
    log "generating sshd host key $HOST_KEY"
    rm -f "$HOST_KEY" "$HOST_KEY.pub"
    ssh-keygen -q -t ed25519 -N '' -C hpcnn-testbed-host -f "$HOST_KEY"
fi
chmod 600 "$HOST_KEY"
if [ ! -s "$CLIENT_KEY" ]; then
    log "generating client key $CLIENT_KEY"
    rm -f "$CLIENT_KEY" "$CLIENT_KEY.pub"
    ssh-keygen -q -t ed25519 -N '' -C hpcnn-testbed-client -f "$CLIENT_KEY"
fi
chown root:root "$CLIENT_KEY" "$CLIENT_KEY.pub"
chmod 600 "$CLIENT_KEY"
chmod 644 "$CLIENT_KEY.pub"
install_if_changed "$(cat "$CLIENT_KEY.pub")" "$AUTH_DIR/$TB_USER" 644 || true
install_if_changed "[$TB_HOST]:$TB_PORT $(cut -d' ' -f1,2 "$HOST_KEY.pub")" "$KNOWN_HOSTS" 644 || true

# ---------------------------------------------------------------- sshd
SSHD_CONF="# Written by hpcnn tests/testbed/up.sh -- test bed only, do not edit.
Port $TB_PORT
ListenAddress $TB_HOST
HostKey $HOST_KEY
PidFile $SSHD_PID
AuthorizedKeysFile $AUTH_DIR/%u
StrictModes no
UsePAM no
PermitRootLogin no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
LogLevel VERBOSE
MaxStartups 50
MaxSessions 50
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
Subsystem sftp internal-sftp"

sshd_changed=
install_if_changed "$SSHD_CONF" "$SSHD_CONFIG" 644 && sshd_changed=1
install -d -m 755 /run/sshd
/usr/sbin/sshd -t -f "$SSHD_CONFIG" || die "sshd config test failed for $SSHD_CONFIG"
if [ -n "$sshd_changed" ]; then
    stop_pidfile "$SSHD_PID" sshd
fi
if pid_alive "$SSHD_PID" sshd; then
    log "sshd already running (pid $(cat "$SSHD_PID"))"
else
    log "starting sshd on $TB_HOST:$TB_PORT (log $SSHD_LOG)"
    touch "$SSHD_LOG" && chmod 644 "$SSHD_LOG"   # sshd -E would create it 0600
    # sshd daemonises itself (own session) and writes the pid file.
    /usr/sbin/sshd -f "$SSHD_CONFIG" -E "$SSHD_LOG" </dev/null || { logtail "$SSHD_LOG"; die "sshd failed to start"; }
    for i in $(seq 1 50); do
        pid_alive "$SSHD_PID" sshd && break
        sleep 0.1
    done
    pid_alive "$SSHD_PID" sshd || { logtail "$SSHD_LOG"; die "sshd did not start"; }
fi

# ---------------------------------------------------------------- verify
SSH=(ssh -i "$CLIENT_KEY" -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes
     -o UserKnownHostsFile="$KNOWN_HOSTS" -o GlobalKnownHostsFile=/dev/null -o ConnectTimeout=10
     -p "$TB_PORT" "$TB_USER@$TB_HOST")

log "verifying ssh login and scheduler commands as $TB_USER"
out=$("${SSH[@]}" 'bash -lc "qsub --help >/dev/null 2>&1; which qsub qstat sbatch squeue"' 2>&1) \
    || { echo "$out" >&2; logtail "$SSHD_LOG"; die "ssh to $TB_USER@$TB_HOST:$TB_PORT failed"; }
echo "$out" | sed 's/^/    /'
[ "$(echo "$out" | grep -c '^/')" = 4 ] || die "qsub/qstat/sbatch/squeue not all on $TB_USER's PATH"

log "verifying a trivial job through the Torque wrapper qsub"
jobid=$("${SSH[@]}" 'bash -lc '"'"'mkdir -p ~/.testbed-verify && cd ~/.testbed-verify && rm -f verify.sh.* && printf "#!/bin/bash\n#PBS -N tbverify\n#PBS -l nodes=1:ppn=1,mem=100mb\necho testbed-ok\n" > verify.sh && qsub verify.sh'"'"'' 2>&1) \
    || die "qsub failed: $jobid"
jobid=$(echo "$jobid" | tail -n 1 | tr -d '[:space:]')
[[ "$jobid" =~ ^[0-9]+$ ]] || die "qsub did not print a job id: $jobid"
t0=$(date +%s)
jstate=
while :; do
    jstate=$(squeue -h -t all -j "$jobid" -o '%T' 2>/dev/null || true)
    case "$jstate" in
        COMPLETED) break ;;
        FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL|DEADLINE|PREEMPTED)
            scontrol show job "$jobid" >&2 || true
            die "verification job $jobid ended $jstate" ;;
    esac
    if [ $(( $(date +%s) - t0 )) -ge 60 ]; then
        scontrol show job "$jobid" >&2 || true
        logtail "$SLURM_VAR/slurmctld.log" "$SLURM_VAR/slurmd.log"
        die "verification job $jobid still '${jstate:-?}' after 60 s"
    fi
    sleep 0.5
done
out=$("${SSH[@]}" "cat ~/.testbed-verify/verify.sh.o$jobid" 2>&1) || die "job output file missing: $out"
[ "$out" = testbed-ok ] || die "unexpected job output: $out"
log "job $jobid completed in about $(( $(date +%s) - t0 )) s"

# ---------------------------------------------------------------- up
ENV_CONTENT="TESTBED_HOST=$TB_HOST
TESTBED_PORT=$TB_PORT
TESTBED_USER=$TB_USER
TESTBED_KEY=$CLIENT_KEY
TESTBED_KNOWN_HOSTS=$KNOWN_HOSTS
TESTBED_HOME=$TB_HOME
TESTBED_SSHD_LOG=$SSHD_LOG
TESTBED_NODE=$NODE"
tmp=$(mktemp)
printf '%s\n' "$ENV_CONTENT" >"$tmp"
install -m 644 "$tmp" "$ENV_FILE"
rm -f "$tmp"
log "test bed is up; settings in $ENV_FILE"

# Grid Engine beside Slurm, as the second cluster account (adds TESTBED_SGE_* to $ENV_FILE).
bash "$(dirname "${BASH_SOURCE[0]}")/sge.sh"
bash "$(dirname "${BASH_SOURCE[0]}")/twofactor.sh"  # a second sshd: key + one-time code (TESTBED_2FA_*)
