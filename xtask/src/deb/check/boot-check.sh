#!/bin/bash
# Runs inside the booted Debian root (PID 1 is the root's own systemd) as a oneshot unit after
# multi-user.target: starts the packaged exporter unit exactly as installed, records what the
# unit's sandbox made of the process, scrapes it on loopback, then does the same with
# --all-devices added through a drop-in (the hardening settings untouched), so the scrape proves
# that every PCI device's sysfs files are readable from inside the sandbox.
# Results go to $OUT, one file per fact; xtask/src/deb/check/boot.rs judges them on the host.
# Arguments: the unit name and the exporter's listen port.
set -u
UNIT=$1
PORT=$2
OUT=/var/lib/vfio-pm-check
rm -rf "$OUT"
mkdir -p "$OUT"

# One scrape over bash's /dev/tcp (the root has no HTTP client); retried while the exporter
# starts. Writes the HTTP response to $1; fails after about 10 s.
scrape() {
    local i
    for i in $(seq 1 50); do
        if exec 3<>"/dev/tcp/127.0.0.1/$PORT" 2>/dev/null; then
            printf 'GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
            timeout 5 cat <&3 >"$1"
            exec 3<&-
            grep -q '^HTTP/1.[01] 200' "$1" && return 0
        fi
        sleep 0.2
    done
    return 1
}

# Everything about the running service: systemd's view, the kernel's view of the main process
# (credentials, capabilities, seccomp, its mount table), and one scrape. $1 names the round.
record() {
    local round=$1 pid
    systemctl show "$UNIT" -p ActiveState -p SubState -p MainPID -p DynamicUser -p User \
        -p ProtectSystem -p ProtectHome -p ProtectKernelTunables -p PrivateDevices \
        -p NoNewPrivileges -p ExecStart >"$OUT/$round.show" 2>&1
    scrape "$OUT/$round.metrics"
    echo $? >"$OUT/$round.scrape-rc"
    # Read after the scrape: the process now certainly runs the exporter, past systemd's
    # sandbox setup.
    pid=$(systemctl show "$UNIT" -p MainPID --value)
    echo "$pid" >"$OUT/$round.pid"
    if [ -n "$pid" ] && [ "$pid" != 0 ]; then
        cat "/proc/$pid/status" >"$OUT/$round.proc-status" 2>&1
        cat "/proc/$pid/mountinfo" >"$OUT/$round.mountinfo" 2>&1
    fi
}

systemctl start "$UNIT"
echo $? >"$OUT/default.start-rc"
record default

# The same unit with --all-devices: a drop-in that replaces ExecStart only.
exec_start=$(grep '^ExecStart=' "/usr/lib/systemd/system/$UNIT" | head -n1)
mkdir -p "/run/systemd/system/$UNIT.d"
printf '[Service]\nExecStart=\n%s --all-devices\n' "$exec_start" \
    >"/run/systemd/system/$UNIT.d/all-devices.conf"
systemctl daemon-reload
systemctl restart "$UNIT"
echo $? >"$OUT/all-devices.start-rc"
record all-devices

systemd-analyze security --no-pager "$UNIT" >"$OUT/security" 2>&1
systemctl stop "$UNIT"
journalctl --no-pager -o short-monotonic -u "$UNIT" >"$OUT/journal" 2>&1
touch "$OUT/done"
