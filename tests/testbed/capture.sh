#!/usr/bin/env bash
# Capture REAL scheduler outputs from the test bed for the parser tests.
#
# Run as root after tests/testbed/up.sh. Every command runs AS hpcuser over the
# test-bed ssh (bash -lc, like a user would). Each capture NAME is saved as
# NAME.stdout, NAME.stderr, NAME.rc in the output directory (default
# tests/fixtures/captured/), plus MANIFEST.md (commands, job scripts, job ids).
# Takes about 2-2.5 minutes (one walltime kill on partition "short").
#
# Job ids: Slurm numbers jobs from 1 after a fresh StateSaveLocation and keeps
# counting across restarts; tests must not rely on specific ids (MANIFEST.md
# says which id played which role in the captured run).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT=${1:-$REPO/tests/fixtures/captured}
ENV_FILE=/etc/hpcnn-testbed/testbed.env
UNKNOWN=999999   # an id no job has on the test bed

log() { echo "[capture] $*"; }
die() { echo "[capture] ERROR: $*" >&2; exit 1; }

[ -f "$ENV_FILE" ] || die "$ENV_FILE missing: run tests/testbed/up.sh first"
# shellcheck disable=SC1090
. "$ENV_FILE"

SSH=(ssh -i "$TESTBED_KEY" -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes
     -o UserKnownHostsFile="$TESTBED_KNOWN_HOSTS" -o GlobalKnownHostsFile=/dev/null
     -o ConnectTimeout=10 -p "$TESTBED_PORT" "$TESTBED_USER@$TESTBED_HOST")

sq() { printf "'%s'" "${1//\'/\'\\\'\'}"; }   # single-quote for the remote shell

# rsh CMD: run CMD as hpcuser in ~/capture through a login shell.
rsh() { "${SSH[@]}" "bash -lc $(sq "cd ~/capture && $1")"; }

mkdir -p "$OUT"
rm -f "$OUT"/*.stdout "$OUT"/*.stderr "$OUT"/*.rc "$OUT"/MANIFEST.md
CAPTURES=$(mktemp)
trap 'rm -f "$CAPTURES"' EXIT

# cap NAME DESCRIPTION CMD: run CMD remotely, save its stdout/stderr/rc.
cap() {
    local name=$1 desc=$2 cmd=$3 rc=0
    rsh "$cmd" >"$OUT/$name.stdout" 2>"$OUT/$name.stderr" || rc=$?
    echo "$rc" >"$OUT/$name.rc"
    printf '| `%s` | %s | `%s` | %s |\n' "$name" "$desc" "${cmd//|/\\|}" "$rc" >>"$CAPTURES"
    log "$name (rc=$rc): $(head -c 100 "$OUT/$name.stdout" | head -n 1)"
}

# state ID: Slurm state of a job (run locally as root; not part of the captures).
state() { squeue -h -t all -j "$1" -o '%T' 2>/dev/null || true; }
finished() {
    case "$(state "$1")" in PENDING|RUNNING|CONFIGURING|COMPLETING|SUSPENDED|"") return 1 ;; esac
}
# wait_for TIMEOUT_S PRED ID...: poll every second until PRED holds for all ids.
wait_for() {
    local timeout=$1 pred=$2 t0 id ok
    shift 2
    t0=$(date +%s)
    while :; do
        ok=1
        for id in "$@"; do "$pred" "$id" || { ok=; break; }; done
        [ -n "$ok" ] && return 0
        [ $(( $(date +%s) - t0 )) -lt "$timeout" ] || die "jobs $* not $pred after $timeout s"
        sleep 1
    done
}
running() { [ "$(state "$1")" = RUNNING ]; }
jobid() { tr -d '[:space:]' <"$OUT/$1.stdout"; }

START=$(date +%s)
log "writing job scripts to $TESTBED_HOME/capture"
"${SSH[@]}" 'bash -lc "rm -rf ~/capture && mkdir -p ~/capture"'
SCRIPTS=(ok.sh fail.sh timeout.sh wait.sh pbs_ok.sh pbs_fail.sh pbs_timeout.sh pbs_dep.sh pbs_gpus3.sh)
put() { "${SSH[@]}" "cat > ~/capture/$1 && chmod +x ~/capture/$1"; }
put ok.sh <<'EOF'
#!/bin/bash
sleep 2
echo ok
exit 0
EOF
put fail.sh <<'EOF'
#!/bin/bash
sleep 2
echo failing on purpose >&2
exit 3
EOF
put timeout.sh <<'EOF'
#!/bin/bash
sleep 200
EOF
put wait.sh <<'EOF'
#!/bin/bash
sleep 3
EOF
put pbs_ok.sh <<'EOF'
#!/bin/bash
#PBS -N pbs_ok
#PBS -l nodes=1:ppn=1,mem=100mb,walltime=00:05:00
sleep 2
echo ok
exit 0
EOF
put pbs_fail.sh <<'EOF'
#!/bin/bash
#PBS -N pbs_fail
#PBS -l nodes=1:ppn=1,mem=100mb,walltime=00:05:00
sleep 2
exit 3
EOF
put pbs_timeout.sh <<'EOF'
#!/bin/bash
#PBS -N pbs_timeout
#PBS -q short
#PBS -l nodes=1:ppn=1,mem=100mb,walltime=00:01:00
trap 'echo got SIGTERM; exit 99' TERM
sleep 200 &
wait
EOF
put pbs_dep.sh <<'EOF'
#!/bin/bash
#PBS -N pbs_dep
#PBS -l nodes=1:ppn=1,mem=100mb
sleep 2
EOF
put pbs_gpus3.sh <<'EOF'
#!/bin/bash
#PBS -N pbs_gpus3
#PBS -l nodes=1:ppn=1:gpus=3,mem=100mb
echo never runs
EOF

# ------------------------------------------------ phase 1: quick jobs that finish
SB='-n1 --mem=100M -o %x.%j.out'
cap slurm_sbatch_parsable "sbatch --parsable: bare id" "sbatch --parsable -J s_ok $SB ok.sh"
S_OK=$(jobid slurm_sbatch_parsable)
cap slurm_sbatch_parsable_fail "sbatch --parsable (job exits 3)" "sbatch --parsable -J s_fail $SB fail.sh"
S_FAIL=$(jobid slurm_sbatch_parsable_fail)
cap torque_qsub "qsub: bare id" "qsub pbs_ok.sh"
Q_OK=$(jobid torque_qsub)
cap torque_qsub_fail "qsub (job exits 3)" "qsub pbs_fail.sh"
Q_FAIL=$(jobid torque_qsub_fail)
log "waiting for the quick jobs $S_OK $S_FAIL $Q_OK $Q_FAIL to finish"
wait_for 60 finished "$S_OK" "$S_FAIL" "$Q_OK" "$Q_FAIL"

# ------------------------------------------------ phase 2: node full, jobs waiting
T_SUBMIT=$(date +%s)
cap slurm_sbatch_parsable_timeout "sbatch --parsable on short, --time=1" \
    "sbatch --parsable -J s_timeout -p short --time=1 $SB timeout.sh"
S_TO=$(jobid slurm_sbatch_parsable_timeout)
cap torque_qsub_timeout "qsub of a script with #PBS -q short, walltime=00:01:00" "qsub pbs_timeout.sh"
Q_TO=$(jobid torque_qsub_timeout)
wait_for 30 running "$S_TO" "$Q_TO"
T_RUNNING=$(date +%s)
cap slurm_sbatch_parsable_dep "sbatch --dependency=afterany" \
    "sbatch --parsable -J s_dep --dependency=afterany:$S_TO $SB wait.sh"
S_DEP=$(jobid slurm_sbatch_parsable_dep)
cap slurm_sbatch_parsable_res "sbatch while the node is full" "sbatch --parsable -J s_res $SB wait.sh"
S_RES=$(jobid slurm_sbatch_parsable_res)
cap torque_qsub_depend "qsub -W depend=afterok (parent will time out)" "qsub -W depend=afterok:$Q_TO pbs_dep.sh"
Q_DEP=$(jobid torque_qsub_depend)
cap torque_qsub_hold "qsub -h with command-line -q/-l walltime" "qsub -h -q short -l walltime=00:00:30 pbs_ok.sh"
Q_HELD=$(jobid torque_qsub_hold)

cap slurm_sbatch_reject_gpus3 "sbatch asking for 3 of 2 GPUs" "sbatch --parsable -J s_gpu3 --gres=gpu:3 $SB ok.sh"
cap slurm_sbatch_reject_mem "sbatch asking for more memory than the node has" "sbatch --parsable -J s_mem -n1 --mem=9000M ok.sh"
cap torque_qsub_reject_gpus3 "qsub of a script with #PBS -l nodes=1:ppn=1:gpus=3" "qsub pbs_gpus3.sh"
cap torque_qsub_reject_gpus3_cmdline "qsub -l nodes=1:ppn=1:gpus=3 on the command line" "qsub -l nodes=1:ppn=1:gpus=3 pbs_ok.sh"
cap torque_qsub_sbatchline "what the wrapper would run for command-line options" \
    "qsub --sbatchline -N named -q short -l nodes=1:ppn=2:gpus=2,mem=100mb,walltime=01:30:00 -W depend=afterok:$Q_OK -v A=1,B=2 pbs_ok.sh"

sleep 2
ALL="$S_OK,$S_FAIL,$S_TO,$S_DEP,$S_RES,$Q_OK,$Q_FAIL,$Q_TO,$Q_DEP,$Q_HELD"
SQ="squeue -h -t all -o '%i|%T|%r|%j'"
cap slurm_squeue_active "completed/failed, 2 running, pending on dependency/resources/hold, unknown id" \
    "$SQ -j $ALL,$UNKNOWN"
cap slurm_squeue_no_t_all "same without -t all (finished jobs missing)" "squeue -h -o '%i|%T|%r|%j' -j $ALL"
cap torque_qstat_f_mix "qstat -f: completed, failed, running, queued(dependency), held, unknown" \
    "qstat -f $Q_OK $Q_FAIL $Q_TO $Q_DEP $Q_HELD $S_RES $UNKNOWN"
cap torque_qstat_f_unknown_first "qstat -f with the unknown id first" "qstat -f $UNKNOWN $Q_OK"
cap torque_qstat_plain_active "plain qstat" "qstat"
cap torque_scontrol_pbs_directives "do #PBS -q short / walltime reach Slurm?" "scontrol show job -o $Q_TO"
cap torque_scontrol_cmdline_opts "do qsub -q short -l walltime=00:00:30 reach Slurm?" "scontrol show job -o $Q_HELD"
cap slurm_scontrol_completed "finished exit 0" "scontrol show job -o $S_OK"
cap slurm_scontrol_failed "finished exit 3" "scontrol show job -o $S_FAIL"
cap slurm_scontrol_pending_dep "pending on dependency" "scontrol show job -o $S_DEP"
cap slurm_scancel "scancel of a pending job" "scancel $S_RES"

# ------------------------------------------------ phase 3: walltime kills
log "waiting for the walltime kills of $S_TO and $Q_TO (about 1-2 minutes)"
wait_for 200 finished "$S_TO" "$Q_TO"
T_DONE=$(date +%s)
wait_for 60 finished "$S_DEP"
cap slurm_squeue_dep_never "afterok parent timed out" "$SQ -j $Q_DEP"
cap torque_qstat_f_dep_never "qstat -f of a job whose dependency can never be met" "qstat -f $Q_DEP"
cap torque_qdel "qdel of a pending job" "qdel $Q_DEP"
cap torque_qdel_held "qdel of a held job" "qdel $Q_HELD"
cap torque_qdel_unknown "qdel of an unknown id" "qdel $UNKNOWN"
cap slurm_scancel_unknown "scancel of an unknown id" "scancel $UNKNOWN"
sleep 1

cap slurm_squeue_final "all jobs finished: COMPLETED, FAILED, TIMEOUT, CANCELLED + unknown id" "$SQ -j $ALL,$UNKNOWN"
cap slurm_squeue_unknown_only "squeue when no id is known" "$SQ -j $UNKNOWN"
cap slurm_scontrol_timeout "walltime kill (sleep, no trap)" "scontrol show job -o $S_TO"
cap slurm_scontrol_timeout_trap "walltime kill, trap exits 99" "scontrol show job -o $Q_TO"
cap slurm_scontrol_cancelled "cancelled while pending" "scontrol show job -o $S_RES"
cap slurm_scontrol_dep_done "afterany job after the parent timed out" "scontrol show job -o $S_DEP"
cap slurm_scontrol_unknown "unknown id" "scontrol show job -o $UNKNOWN"
cap slurm_sacct "sacct without accounting storage" "sacct -X -n -P -o JobID,State,ExitCode -j $S_OK,$S_FAIL"
cap torque_qstat_f_final "qstat -f after all ended, plus unknown id" \
    "qstat -f $Q_OK $Q_FAIL $Q_TO $Q_DEP $Q_HELD $S_TO $S_RES $UNKNOWN"
cap torque_qstat_f_unknown_only "qstat -f of an unknown id alone" "qstat -f $UNKNOWN"
cap torque_qstat_plain_final "plain qstat" "qstat"
cap torque_qstat_no_such_option "qstat -x is not supported by the wrapper" "qstat -x $Q_OK"
cap torque_qstat_version "qstat --version (dialect detection)" "qstat --version"
cap job_output_timeout_trap "stdout of the trapped walltime job" "cat pbs_timeout.sh.o$Q_TO"
cap job_output_ok "stdout/stderr files qsub made in the submit dir" "ls -1"
END=$(date +%s)

# ------------------------------------------------ manifest
{
    echo "# Captured scheduler outputs (test bed)"
    echo
    echo "Written by \`tests/testbed/capture.sh\` on $(date -u +%Y-%m-%dT%H:%M:%SZ): $(sinfo -V 2>/dev/null),"
    echo "Debian slurm-wlm-torque wrappers, node \`$TESTBED_NODE\` (2 pretend GPUs; partitions \`gpu\`"
    echo "default/unlimited and \`short\` MaxTime=1 min). Every command ran as \`$TESTBED_USER\` through"
    echo "\`ssh ... bash -lc 'cd ~/capture && CMD'\`. Each capture is \`NAME.stdout\`, \`NAME.stderr\`, \`NAME.rc\`."
    echo
    echo "Job ids are those of this run only (Slurm counts from 1 after a fresh state dir"
    echo "and keeps counting across restarts): never rely on specific ids in tests."
    echo "The unknown id used is $UNKNOWN. Timings: walltime job running $((T_RUNNING - T_SUBMIT)) s after submit"
    echo "(both jobs), killed jobs finished $((T_DONE - T_RUNNING)) s after they started; whole capture $((END - START)) s."
    echo
    echo "## Job ids in this capture"
    echo
    echo "| role | id | how | end state |"
    echo "|---|---|---|---|"
    for role in "S_OK:sbatch ok.sh:" "S_FAIL:sbatch fail.sh (exit 3):" "S_TO:sbatch -p short --time=1 timeout.sh:" \
                "S_DEP:sbatch --dependency=afterany:S_TO wait.sh:" "S_RES:sbatch wait.sh while node full, then scancel:" \
                "Q_OK:qsub pbs_ok.sh:" "Q_FAIL:qsub pbs_fail.sh (exit 3):" "Q_TO:qsub pbs_timeout.sh (#PBS -q short, trap exits 99):" \
                "Q_DEP:qsub -W depend=afterok:Q_TO pbs_dep.sh, then qdel:" "Q_HELD:qsub -h ..., then qdel:"; do
        var=${role%%:*}; rest=${role#*:}; how=${rest%:}
        id=${!var}
        printf '| %s | %s | `%s` | %s |\n' "$var" "$id" "$how" "$(state "$id")"
    done
    echo
    echo "## Captures"
    echo
    echo "| name | what | command (run in ~/capture) | rc |"
    echo "|---|---|---|---|"
    cat "$CAPTURES"
    echo
    echo "## Job scripts (in ~/capture)"
    for s in "${SCRIPTS[@]}"; do
        echo
        echo "### $s"
        echo
        echo '```bash'
        rsh "cat $s"
        echo '```'
    done
} >"$OUT/MANIFEST.md"
log "done in $((END - START)) s; files in $OUT"
