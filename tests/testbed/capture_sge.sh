#!/usr/bin/env bash
# Capture REAL Grid Engine outputs from the test bed for the sge dialect's parser tests.
#
# Run as root after tests/testbed/up.sh (which runs sge.sh). Every command runs AS the SGE
# account (TESTBED_SGE_USER) over the test-bed ssh (bash -lc, like a user would). Each capture
# NAME is saved as NAME.stdout, NAME.stderr, NAME.rc in the output directory (default
# tests/fixtures/sge/), plus MANIFEST.md. Takes about a minute; stops and restarts sge_qmaster
# once (for the "scheduler down" capture).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT=${1:-$REPO/tests/fixtures/sge}
ENV_FILE=/etc/hpcnn-testbed/testbed.env
UNKNOWN=999999

log() { echo "[capture sge] $*"; }
die() { echo "[capture sge] ERROR: $*" >&2; exit 1; }

[ -f "$ENV_FILE" ] || die "$ENV_FILE missing: run tests/testbed/up.sh first"
# shellcheck disable=SC1090
. "$ENV_FILE"
[ -n "${TESTBED_SGE_USER:-}" ] || die "no TESTBED_SGE_USER in $ENV_FILE: run tests/testbed/sge.sh"

SSH=(ssh -i "$TESTBED_KEY" -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes
     -o UserKnownHostsFile="$TESTBED_KNOWN_HOSTS" -o GlobalKnownHostsFile=/dev/null
     -o ConnectTimeout=10 -p "$TESTBED_PORT" "$TESTBED_SGE_USER@$TESTBED_HOST")
sq() { printf "'%s'" "${1//\'/\'\\\'\'}"; }
rsh() { "${SSH[@]}" "bash -lc $(sq "cd ~/capture && $1")"; }

# The dialect's own status call (hpcnn.schedulers.sge), so the captures are what it parses.
PY=${PYTHON:-/opt/hpcnn-venv/bin/python}
status_line() {
    PYTHONPATH=$REPO "$PY" -c 'import shlex, sys
from hpcnn.schedulers import get_dialect
print(shlex.join(get_dialect("sge").status_command(sys.argv[1:])))' "$@"
}

mkdir -p "$OUT"
rm -f "$OUT"/*.stdout "$OUT"/*.stderr "$OUT"/*.rc "$OUT"/MANIFEST.md
CAPTURES=$(mktemp)
trap 'rm -f "$CAPTURES"' EXIT

cap() {  # cap NAME DESCRIPTION CMD
    local name=$1 desc=$2 cmd=$3 rc=0
    rsh "$cmd" >"$OUT/$name.stdout" 2>"$OUT/$name.stderr" || rc=$?
    echo "$rc" >"$OUT/$name.rc"
    printf '| `%s` | %s | `%s` | %s |\n' "$name" "$desc" "${cmd//|/\\|}" "$rc" >>"$CAPTURES"
    log "$name (rc=$rc): $(head -c 100 "$OUT/$name.stdout" | head -n 1)"
}
jobid() { tr -d '[:space:]' <"$OUT/$1.stdout"; }
# state ID: the state letters of a job, "" once Grid Engine forgot it (as root, not captured).
. "$TESTBED_SGE_ROOT/default/common/settings.sh"
state() { qstat -u '*' | awk -v id="$1" '$1 == id {print $5}'; }
wait_state() {  # wait_state TIMEOUT PATTERN ID: until the state matches (regex; "" = gone)
    local t0
    t0=$(date +%s)
    until [[ "$(state "$3")" =~ ^$2$ ]]; do
        [ $(( $(date +%s) - t0 )) -lt "$1" ] || die "job $3 is '$(state "$3")', not '$2', after $1 s"
        sleep 0.5
    done
}

START=$(date +%s)
"${SSH[@]}" 'bash -lc "rm -rf ~/capture && mkdir -p ~/capture"'
SCRIPTS=(ok.sh fail.sh block.sh notify.sh)
put() { "${SSH[@]}" "cat > ~/capture/$1"; }
put ok.sh <<'EOF'
sleep 2
echo ok
EOF
put fail.sh <<'EOF'
sleep 2
exit 3
EOF
put block.sh <<'EOF'
sleep 40
EOF
put notify.sh <<'EOF'
# Submitted with -notify: qmod -sj sends SIGUSR1 and qdel SIGUSR2 first (SIGSTOP / SIGKILL
# follow after the queue's notify time); trapping them keeps the job, so "s" and "dr" stay.
trap 'echo got USR1' USR1
trap 'echo got USR2' USR2
for i in $(seq 1 60); do sleep 1; done
EOF
Q='qsub -terse -cwd -S /bin/bash'

# ---------------------------------------------- detection and submission
cap qstat_help "qstat -help (dialect detection)" "qstat -help"
cap qstat_version "qstat --version (the PBS dialects' probe)" "qstat --version"
cap wrapper_qstat_help "Slurm's Torque-wrapper qstat -help (what the sge probe sees on the Slurm account)" \
    "/usr/bin/qstat -help"
cap qsub_terse "qsub -terse: the bare id" "$Q -N s_ok ok.sh"
OK=$(jobid qsub_terse)
cap qsub_plain "qsub without -terse (job exits 3)" "qsub -cwd -S /bin/bash -N s_fail fail.sh"
FAIL=$(sed -n 's/^Your job \([0-9]*\) .*/\1/p' "$OUT/qsub_plain.stdout")
cap qsub_reject_gpus3 "qsub -w e asking for 3 of 2 gpus" "$Q -w e -l gpu=3 ok.sh"
cap qsub_reject_pe3 "qsub -w e asking for 3 slots on a 2-slot host" "$Q -w e -pe smp 3 ok.sh"
cap qsub_missing_script "qsub of a script that does not exist" "$Q nonexistent.sh"
cap qsub_array "qsub -terse of an array job" "$Q -h -t 1-3 -N s_array ok.sh"
ARRAY=$(jobid qsub_array | cut -d. -f1)
log "waiting for $OK and $FAIL to finish"
wait_state 60 "" "$OK"
wait_state 60 "" "$FAIL"

# ---------------------------------------------- every state at once
cap qsub_error "qsub with an output path that cannot be opened (goes to Eqw)" \
    "$Q -o /nonexistent/out -N s_err ok.sh"
ERR=$(jobid qsub_error)
wait_state 30 Eqw "$ERR"
cap qsub_block "qsub -pe smp 2 -notify: fills the host" "$Q -notify -pe smp 2 -N s_block notify.sh"
BLOCK=$(jobid qsub_block)
wait_state 30 r "$BLOCK"
cap qsub_pending "qsub while the host is full" "$Q -N s_pend ok.sh"
PEND=$(jobid qsub_pending)
cap qsub_held "qsub -h" "$Q -h -N s_held ok.sh"
HELD=$(jobid qsub_held)
cap qsub_hold_jid "qsub -hold_jid (dependency on the blocker)" "$Q -hold_jid $BLOCK -N s_dep ok.sh"
DEP=$(jobid qsub_hold_jid)
sleep 3
ALL="$OK $FAIL $ERR $BLOCK $PEND $HELD $DEP $ARRAY $UNKNOWN"
cap status_mix "the dialect's status call: running, queued, held, hold_jid, error, array, finished, unknown" \
    "$(status_line $ALL)"
cap qstat_xml_mix "qstat -xml alone" "qstat -xml -u \"\$(id -un)\""
cap qstat_j_error "qstat -j of the job in error state" "qstat -j $ERR"
cap qstat_j_unknown "qstat -j of an unknown id" "qstat -j $UNKNOWN"
cap qmod_suspend "qmod -sj of the running job" "qmod -sj $BLOCK"
sleep 2
cap status_suspended "status call: the running job suspended" "$(status_line $BLOCK $PEND)"
cap qmod_unsuspend "qmod -usj" "qmod -usj $BLOCK"
cap qdel_running "qdel of the running -notify job (SIGUSR2 first, SIGKILL 10 s later)" "qdel $BLOCK"
sleep 1
cap status_deleting "status call while the deleted job waits for its kill (dr)" "$(status_line $BLOCK $PEND $DEP)"
cap qdel_pending "qdel of a pending job" "qdel $PEND"
cap qdel_unknown "qdel of an unknown id" "qdel $UNKNOWN"
wait_state 60 "" "$BLOCK"
wait_state 60 "" "$DEP"
cap qdel_rest "qdel of the held, error and array jobs" "qdel $HELD $ERR $ARRAY"
sleep 1
cap status_empty "status call when none of the ids is known any more" "$(status_line $ALL)"
cap qacct_ok "qacct of the job that exited 0 (accounting is on here; sites may turn it off)" "qacct -j $OK"
cap qacct_fail "qacct of the job that exited 3" "qacct -j $FAIL"
cap qacct_deleted "qacct of the running job deleted with qdel" "qacct -j $BLOCK"

# ---------------------------------------------- scheduler down
QMASTER_PID=$(cat "$TESTBED_SGE_ROOT/../spool/qmaster/qmaster.pid")
log "stopping sge_qmaster (pid $QMASTER_PID) for the scheduler-down captures"
kill "$QMASTER_PID"
while kill -0 "$QMASTER_PID" 2>/dev/null; do sleep 0.2; done
cap status_qmaster_down "status call with sge_qmaster stopped" "$(status_line $OK)"
cap qsub_qmaster_down "qsub with sge_qmaster stopped" "$Q ok.sh"
log "restarting Grid Engine"
bash "$HERE/sge.sh" >/dev/null
cap status_other_qstat "status call where Slurm's Torque-wrapper qstat comes first on PATH" \
    "PATH=/usr/bin:/bin; $(status_line $OK)"
END=$(date +%s)

{
    echo "# Captured Grid Engine outputs (test bed)"
    echo
    echo "Written by \`tests/testbed/capture_sge.sh\` on $(date -u +%Y-%m-%dT%H:%M:%SZ) from a real"
    echo "$(head -n 1 "$OUT/qstat_help.stdout") (Son of Grid Engine, Debian bookworm's gridengine packages unpacked"
    echo "by \`tests/testbed/sge.sh\`): one host \`$TESTBED_NODE\`, queue \`all.q\` with 2 slots, PE \`smp\`,"
    echo "consumable \`gpu=2\`, queue \`notify\` 10 s. Every command ran as \`$TESTBED_SGE_USER\` through"
    echo "\`ssh ... bash -lc 'cd ~/capture && CMD'\`. Each capture is \`NAME.stdout\`, \`NAME.stderr\`, \`NAME.rc\`."
    echo "\`status_*\` captures are the sge dialect's own status call (\`sh -c ... qstat -xml ...\`)."
    echo
    echo "Job ids are those of this run only; the unknown id is $UNKNOWN. Whole capture $((END - START)) s."
    echo
    echo "\`states_doc.xml\` is NOT a capture: the state letters one host cannot hold still (t, Rr, Rq,"
    echo "hRwq, S, T, dt, hr, Ehqw, w, dRr; qstat(1) of Son of Grid Engine 8.1.9, section \"-s\" and the"
    echo "state column) written by hand in the captured \`qstat -xml\` format, ids 101-111."
    echo
    echo "## Job ids in this capture"
    echo
    echo "| role | id | how |"
    echo "|---|---|---|"
    echo "| OK | $OK | \`qsub -terse ok.sh\` (exit 0, finished before the status calls) |"
    echo "| FAIL | $FAIL | \`qsub fail.sh\` (exit 3, finished before the status calls) |"
    echo "| ERR | $ERR | \`qsub -o /nonexistent/out ok.sh\`: Eqw |"
    echo "| BLOCK | $BLOCK | \`qsub -notify -pe smp 2 notify.sh\`: r, then s (qmod -sj), then dr (qdel) |"
    echo "| PEND | $PEND | \`qsub ok.sh\` while the host is full: qw, then qdel |"
    echo "| HELD | $HELD | \`qsub -h ok.sh\`: hqw |"
    echo "| DEP | $DEP | \`qsub -hold_jid BLOCK ok.sh\`: hqw, runs after BLOCK |"
    echo "| ARRAY | $ARRAY | \`qsub -h -t 1-3 ok.sh\`: hqw |"
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
