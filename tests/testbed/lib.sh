# Shared by up.sh and down.sh: the test bed's paths and process helpers (sourced).
# shellcheck shell=bash

TB_ETC=/etc/hpcnn-testbed
TB_VAR=/var/lib/hpcnn-testbed
SLURM_VAR=$TB_VAR/slurm
SLURM_ETC=/etc/slurm
ENV_FILE=$TB_ETC/testbed.env
SSHD_CONFIG=$TB_ETC/sshd_config
SSHD_LOG=$TB_VAR/sshd.log
SSHD_PID=$TB_VAR/sshd.pid
HOST_KEY=$TB_ETC/ssh_host_ed25519_key
CLIENT_DIR=$TB_ETC/client
CLIENT_KEY=$CLIENT_DIR/id_ed25519
KNOWN_HOSTS=$CLIENT_DIR/known_hosts
AUTH_DIR=$TB_ETC/authorized_keys
TB_USER=hpcuser
TB_HOME=/home/$TB_USER
TB_HOST=127.0.0.1
TB_PORT=2222
VENV=/opt/hpcnn-venv

# pid_alive PIDFILE COMM: true when the pid file names a live process called COMM.
pid_alive() {
    local pidfile=$1 comm=$2 pid
    [ -s "$pidfile" ] || return 1
    pid=$(tr -dc 0-9 <"$pidfile")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ]
}

# stop_pidfile PIDFILE COMM: SIGTERM the process, wait up to 15 s, then SIGKILL.
stop_pidfile() {
    local pidfile=$1 comm=$2 pid i
    if pid_alive "$pidfile" "$comm"; then
        pid=$(tr -dc 0-9 <"$pidfile")
        log "stopping $comm (pid $pid)"
        kill "$pid" 2>/dev/null || true
        for i in $(seq 1 150); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "$comm did not stop, sending SIGKILL"
            kill -9 "$pid" 2>/dev/null || true
            sleep 0.5
        fi
    fi
    rm -f "$pidfile"
}
