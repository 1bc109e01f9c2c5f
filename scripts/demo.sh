#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run Lifeboat's main job on embedded defaults: protect a sample disk, write to it
# through the agent's NBD export, take a bookmark, and run test failovers verified by sha256.
# Home: ./demo-home (override with LIFEBOAT_HOME).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
HOME_DIR=${LIFEBOAT_HOME:-demo-home}
if [ -n "${DBUS_SESSION_BUS_ADDRESS:-}" ] || [ -n "${PYTHON_KEYRING_BACKEND:-}" ]; then
  .venv/bin/lifeboat demo --home "$HOME_DIR"
  if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ] && [ -z "${LIFEBOAT_NO_CONSOLE:-}" ]; then
    # A screen: end in the console, on the demo's appliance (its machine, points and drills).
    exec .venv/bin/lifeboat-console --home "$HOME_DIR/appliance"
  fi
  exit 0
fi
# Headless machine: run the OS keyring (Secret Service, gnome-keyring) for this session only.
# The vault key lives in it; the demo recreates its home on every run.
# A fresh keyring folder per run: the demo recreates its home, and the keyring's password is random.
mkdir -p "$HOME_DIR"; rm -rf "$HOME_DIR/keyring"; mkdir -m 700 "$HOME_DIR/keyring"
export XDG_DATA_HOME="$PWD/$HOME_DIR/keyring"
exec dbus-run-session -- sh -c '
  head -c 24 /dev/urandom | base64 | tr -d "\\n" | gnome-keyring-daemon --unlock --components=secrets >/dev/null 2>&1
  exec .venv/bin/lifeboat demo --home "$0"' "$HOME_DIR"
