#!/usr/bin/env bash
# A cluster with two-factor login: a second sshd for the same account (hpcuser) that asks for
# the key AND a one-time code (TOTP, RFC 6238), as many clusters do (run as root; idempotent;
# up.sh calls it after the main sshd is up, down.sh calls it with --down/--purge).
#
#   twofactor.sh          apt-installs libpam-oath and oathtool if missing; writes the TOTP
#                         secret (kept across runs), the PAM service and the sshd config; starts
#                         sshd on 127.0.0.1:2223; checks that a batch login is refused and a
#                         login with key + code works; adds TESTBED_2FA_* to testbed.env
#   twofactor.sh --down   stop that sshd
#   twofactor.sh --purge  also remove its PAM service, secret, users file and log
#
# The main test sshd (UsePAM no) and the machine's own sshd (/etc/pam.d/sshd) are untouched:
# OpenSSH 9.2 names its PAM service after the program (__progname), so this sshd runs through
# a symlink called sshd-hpcnn-2fa and reads /etc/pam.d/sshd-hpcnn-2fa, nothing else.
# Codes: `oathtool --totp $(cat $TESTBED_2FA_SECRET_FILE)`. pam_oath takes each code once and
# only codes newer than the last one used (window=20 steps of 30 s either side of now).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/lib.sh"

TF_PORT=2223
TF_NAME=sshd-hpcnn-2fa                   # the program name = the PAM service name
TF_PROG=$TB_VAR/$TF_NAME                  # symlink to /usr/sbin/sshd
TF_PAM=/etc/pam.d/$TF_NAME
TF_CONFIG=$TB_ETC/sshd_2fa_config
TF_PID=$TB_VAR/sshd-2fa.pid
TF_LOG=$TB_VAR/sshd-2fa.log
TF_USERS=$TB_ETC/users.oath               # pam_oath's users file (root 0600; it records use)
TF_SECRET=$CLIENT_DIR/totp_secret         # the account's "authenticator app" (root 0600)
TF_KNOWN_HOSTS=$CLIENT_DIR/known_hosts_2fa
PACKAGES=(libpam-oath oathtool)

log() { echo "[testbed 2fa] $*"; }
die() { echo "[testbed 2fa] ERROR: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root"

# set_env [LINE...]: testbed.env without its TESTBED_2FA_* lines (tests find the 2FA sshd
# through them: gone while it is not up), then LINE... appended (sed -i renames a new file).
set_env() {
    [ -f "$ENV_FILE" ] || return 0
    sed -i '/^TESTBED_2FA_/d' "$ENV_FILE"
    [ $# -eq 0 ] || printf '%s\n' "$@" >>"$ENV_FILE"
}

case "${1:-}" in
    "") ;;
    --down)
        set_env
        stop_pidfile "$TF_PID" "$TF_NAME"
        exit 0 ;;
    --purge)
        set_env
        stop_pidfile "$TF_PID" "$TF_NAME"
        rm -f "$TF_PROG" "$TF_PAM" "$TF_CONFIG" "$TF_LOG" "$TF_USERS" "$TF_SECRET" "$TF_KNOWN_HOSTS"
        exit 0 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) die "unknown argument: $1 (use --down, --purge or nothing)" ;;
esac

[ -s "$CLIENT_KEY" ] && [ -s "$HOST_KEY.pub" ] || die "the test bed's keys are missing: run up.sh"
set_env  # not up until the end

# ---------------------------------------------------------------- packages
installed=$(dpkg-query -W -f='${Status}\n' "${PACKAGES[@]}" 2>/dev/null | grep -c '^install ok installed$' || true)
if [ "$installed" != ${#PACKAGES[@]} ]; then
    log "installing ${PACKAGES[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -q || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" \
        || die "apt-get install ${PACKAGES[*]} failed"
fi

# ---------------------------------------------------------------- secret and PAM
if [ ! -s "$TF_SECRET" ]; then
    log "creating the TOTP secret $TF_SECRET"
    umask 077
    od -An -N20 -tx1 /dev/urandom | tr -d ' \n' >"$TF_SECRET.tmp"
    mv -f "$TF_SECRET.tmp" "$TF_SECRET"
    umask 022
    rm -f "$TF_USERS"
fi
chmod 600 "$TF_SECRET"
secret=$(cat "$TF_SECRET")
# pam_oath rewrites its line on every login (last code, time): written only when missing.
if ! grep -q "^HOTP/T30/6[[:space:]]\+$TB_USER[[:space:]].*$secret" "$TF_USERS" 2>/dev/null; then
    log "writing $TF_USERS"
    printf 'HOTP/T30/6\t%s\t-\t%s\n' "$TB_USER" "$secret" >"$TF_USERS.tmp"
    chmod 600 "$TF_USERS.tmp"
    mv -f "$TF_USERS.tmp" "$TF_USERS"
fi

write_if_changed() {  # write_if_changed CONTENT DEST: returns 0 when DEST changed
    local tmp
    tmp=$(mktemp)
    printf '%s\n' "$1" >"$tmp"
    if [ -f "$2" ] && cmp -s "$tmp" "$2"; then rm -f "$tmp"; return 1; fi
    install -m 644 -o root -g root "$tmp" "$2"
    rm -f "$tmp"
    log "wrote $2"
}

changed=
write_if_changed "# Written by hpcnn tests/testbed/twofactor.sh -- test bed only, do not edit.
# Read only by the sshd started as $TF_PROG (PAM service = program name).
auth     required  pam_oath.so usersfile=$TF_USERS window=20 digits=6
account  required  pam_permit.so
session  required  pam_permit.so" "$TF_PAM" && changed=1

# The main test sshd's config (up.sh), with its own port and pid file, and PAM asking for a
# code after the key.
[ -s "$SSHD_CONFIG" ] || die "$SSHD_CONFIG missing: run up.sh"
TF_CONF="# Written by hpcnn tests/testbed/twofactor.sh from $SSHD_CONFIG -- test bed only.
$(sed -e '/^#/d' -e "s|^Port .*|Port $TF_PORT|" -e "s|^PidFile .*|PidFile $TF_PID|" \
      -e 's|^UsePAM .*|UsePAM yes|' \
      -e 's|^KbdInteractiveAuthentication .*|KbdInteractiveAuthentication yes|' "$SSHD_CONFIG")
AuthenticationMethods publickey,keyboard-interactive:pam"
for line in "Port $TF_PORT" "PidFile $TF_PID" "UsePAM yes" "KbdInteractiveAuthentication yes"; do
    grep -qx "$line" <<<"$TF_CONF" || die "$SSHD_CONFIG has no line to turn into '$line'"
done
write_if_changed "$TF_CONF" "$TF_CONFIG" && changed=1

write_if_changed "[$TB_HOST]:$TF_PORT $(cut -d' ' -f1,2 "$HOST_KEY.pub")" "$TF_KNOWN_HOSTS" || true

# ---------------------------------------------------------------- sshd
if [ "$(readlink "$TF_PROG" 2>/dev/null)" != /usr/sbin/sshd ]; then
    ln -sfn /usr/sbin/sshd "$TF_PROG"
    changed=1
fi
"$TF_PROG" -t -f "$TF_CONFIG" || die "sshd config test failed for $TF_CONFIG"
[ -n "$changed" ] && stop_pidfile "$TF_PID" "$TF_NAME"
if pid_alive "$TF_PID" "$TF_NAME"; then
    log "2FA sshd already running (pid $(cat "$TF_PID"))"
else
    log "starting the 2FA sshd on $TB_HOST:$TF_PORT (log $TF_LOG)"
    install -d -m 755 /run/sshd
    touch "$TF_LOG" && chmod 644 "$TF_LOG"
    "$TF_PROG" -f "$TF_CONFIG" -E "$TF_LOG" </dev/null || die "the 2FA sshd failed to start"
    for _ in $(seq 1 50); do
        pid_alive "$TF_PID" "$TF_NAME" && break
        sleep 0.1
    done
    pid_alive "$TF_PID" "$TF_NAME" || { tail -n 30 "$TF_LOG" >&2; die "the 2FA sshd did not start"; }
fi

# ---------------------------------------------------------------- verify
SSH=(ssh -i "$CLIENT_KEY" -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes
     -o UserKnownHostsFile="$TF_KNOWN_HOSTS" -o GlobalKnownHostsFile=/dev/null
     -o ConnectTimeout=10 -o ControlPath=none -p "$TF_PORT" "$TB_USER@$TB_HOST")
out=$("${SSH[@]}" -o BatchMode=yes true 2>&1 </dev/null) \
    && die "a batch login without a code got in: $out"
case "$out" in
    *"Permission denied (keyboard-interactive)"*) log "a login without a code is refused" ;;
    *) tail -n 20 "$TF_LOG" >&2; die "a login without a code failed otherwise: $out" ;;
esac
# The key + a code newer than the last one used (pam_oath refuses older ones and repeats).
now=$(( $(date +%s) / 30 ))
last_code=$(awk -v u="$TB_USER" '$2 == u { print $6 }' "$TF_USERS")
counter=$now
for c in $(seq $(( now - 20 )) $(( now + 20 ))); do
    [ -n "$last_code" ] && [ "$(oathtool --totp -N "@$(( c * 30 ))" "$secret")" = "$last_code" ] \
        && [ $(( c + 1 )) -gt "$counter" ] && counter=$(( c + 1 ))
done
askpass=$(mktemp)
trap 'rm -f "$askpass"' EXIT
printf '#!/bin/sh\noathtool --totp -N "@%s" %s\n' "$(( counter * 30 ))" "$secret" >"$askpass"
chmod 700 "$askpass"
out=$(SSH_ASKPASS=$askpass SSH_ASKPASS_REQUIRE=force DISPLAY=none \
      "${SSH[@]}" 'echo 2fa-ok' 2>&1 </dev/null) \
    || { tail -n 20 "$TF_LOG" >&2; die "login with key + code failed: $out"; }
[ "$(echo "$out" | tail -n 1)" = 2fa-ok ] || die "unexpected output after a 2FA login: $out"
log "a login with key + code works"

# ---------------------------------------------------------------- up
[ -f "$ENV_FILE" ] || die "$ENV_FILE missing: up.sh writes it before calling this script"
set_env "TESTBED_2FA_PORT=$TF_PORT" "TESTBED_2FA_SECRET_FILE=$TF_SECRET" \
        "TESTBED_2FA_USERS_FILE=$TF_USERS" "TESTBED_2FA_KNOWN_HOSTS=$TF_KNOWN_HOSTS" \
        "TESTBED_2FA_SSHD_LOG=$TF_LOG"
log "the 2FA sshd is up; its facts are in $ENV_FILE"
