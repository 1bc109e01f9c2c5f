#!/usr/bin/env bash
# The local recovery host (issue 13): start, stop or report libvirt's daemons when no systemd runs them
# (containers, CI). Idempotent: `start` on a running host only checks it answers. docs/ARCHITECTURE.md §9.
# Usage: scripts/recovery-host.sh start|stop|status    (exit 0 = running/stopped as asked; 1 = cannot)
set -euo pipefail
URI=${LIBVIRT_DEFAULT_URI:-qemu:///system}
LOG=${LIFEBOAT_RECOVERY_HOST_LOG:-/tmp/lifeboat-recovery-host.log}

answers() { timeout 10 virsh -c "$URI" version >/dev/null 2>&1; }
running() { pgrep -x "$1" >/dev/null 2>&1; }

case "${1:-}" in
  start)
    command -v virsh >/dev/null && command -v libvirtd >/dev/null || {
      echo "libvirt is not installed (run scripts/setup.sh: libvirt-daemon-system libvirt-clients)" >&2; exit 1; }
    if answers; then echo "recovery host: libvirtd answers on $URI"; exit 0; fi
    if [ -d /run/systemd/system ] && systemctl start virtlogd libvirtd 2>/dev/null && answers; then
      echo "recovery host: started by systemd"; exit 0; fi
    [ "$(id -u)" -eq 0 ] || { echo "starting libvirtd by hand needs root (qemu:///system)" >&2; exit 1; }
    # in a subshell that exits at once: a backgrounded `a || b &` list would keep the caller's stdout open for
    # as long as the daemon runs (a caller capturing the output would wait forever)
    running virtlogd || (setsid virtlogd >>"$LOG" 2>&1 < /dev/null &)
    running libvirtd || (setsid libvirtd >>"$LOG" 2>&1 < /dev/null &)
    for _ in $(seq 1 300); do answers && { echo "recovery host: libvirtd started on $URI"; exit 0; }; sleep 0.1; done
    echo "libvirtd did not answer on $URI within 30 s (log: $LOG)" >&2; exit 1 ;;
  stop)
    for d in libvirtd virtlogd; do pid=$(pgrep -x "$d" || true); [ -z "$pid" ] || kill $pid; done
    echo "recovery host: stopped" ;;
  status)
    if answers; then echo "running ($URI)"; else echo "not running"; exit 1; fi ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
