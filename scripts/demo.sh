#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run Lifeboat's main job on embedded defaults: protect a sample disk, write to it
# through the agent's NBD export, take a bookmark, and run test failovers verified by sha256.
# Home: ./demo-home (override with LIFEBOAT_HOME); arguments go to `lifeboat demo` (e.g. --size-mib 128).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${LIFEBOAT_SKIP_SETUP:-}" ] || scripts/setup.sh
HOME_DIR=${LIFEBOAT_HOME:-demo-home}
if [ -n "${DBUS_SESSION_BUS_ADDRESS:-}" ] || [ -n "${PYTHON_KEYRING_BACKEND:-}" ]; then
  .venv/bin/lifeboat demo --home "$HOME_DIR" "$@"
  if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ] && [ -z "${LIFEBOAT_NO_CONSOLE:-}" ]; then
    # A screen: end in the console, on the demo's appliance (its machine, points and drills).
    exec .venv/bin/lifeboat-console --home "$HOME_DIR/appliance"
  fi
  exit 0
fi
# Headless machine: no OS keyring of its own. The demo makes one (Secret Service, gnome-keyring) in its home, whose
# password is kept beside it (0600; a demo convenience, never how an appliance keeps its keyring), and a wrapper
# ($HOME_DIR/lifeboat) that runs lifeboat with it unlocked: the home the demo leaves works afterwards.
# A fresh keyring per run: the demo recreates its home.
mkdir -p "$HOME_DIR"; rm -rf "$HOME_DIR/keyring"; mkdir -m 700 "$HOME_DIR/keyring"
(umask 077; head -c 24 /dev/urandom | base64 | tr -d "\n" > "$HOME_DIR/keyring/.password")
ROOT=$PWD
HOME_ABS=$(cd "$HOME_DIR" && pwd)
cat > "$HOME_DIR/lifeboat" <<WRAP
#!/bin/sh
# lifeboat with the demo's keyring (made by scripts/demo.sh on a machine without an OS keyring of its own)
export XDG_DATA_HOME="$HOME_ABS/keyring"
# (fd 3 keeps lifeboat's own standard error; the session bus's start-up chatter goes nowhere)
exec 3>&2
exec dbus-run-session -- sh -c 'gnome-keyring-daemon --unlock --components=secrets < "\$XDG_DATA_HOME/.password" >/dev/null 2>&1
  exec "$ROOT/.venv/bin/lifeboat" "\$@" 2>&3 3>&-' lifeboat "\$@" 2>/dev/null
WRAP
chmod 700 "$HOME_DIR/lifeboat"
export LIFEBOAT_DEMO_RUNNER="$HOME_DIR/lifeboat"
exec "$HOME_DIR/lifeboat" demo --home "$HOME_DIR" "$@"
