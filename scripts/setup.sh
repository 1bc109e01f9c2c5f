#!/usr/bin/env bash
# Set up a fresh Debian machine for Lifeboat: system packages, then a virtualenv with the project installed.
# Idempotent; safe to run again. Usage: scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

SYSTEM_PACKAGES=(
  qemu-utils        # qemu-io, qemu-img, qemu-nbd: real NBD clients in tests and benches
  libnbd-bin        # nbdcopy, nbdinfo, nbdfuse
  file              # nbdinfo probes an export's content with file(1); without it nbdinfo prints garbage bytes
  python3-libnbd    # libnbd's Python binding (Debian's python3), used as a real client in tests
  nbdkit            # baseline NBD server for bench/capture
  fuse3             # nbdfuse
  e2fsprogs         # mkfs.ext4 on an export
  util-linux        # losetup, fsfreeze
  rsync             # resync baseline
  curl              # a real HTTPS client against the control API in tests (hostile input)
  fonts-dejavu-core # text in offscreen Qt screenshots
  libgl1 libegl1 libxkbcommon0 libfontconfig1 libdbus-1-3 # Qt runtime
  python3-venv
  gnome-keyring dbus # the OS keyring (Secret Service) on a headless Linux appliance
  golang-go golang-github-vmware-govmomi-dev # vcsim (vSphere simulator) built from source for tests/bench
  # the recovery host (issue 13): libvirt + QEMU (TCG), driven through virsh (engine/recovery/hosts/libvirt.py)
  qemu-system-x86 libvirt-daemon-system libvirt-clients
  ovmf              # UEFI firmware for recovered VMs with --firmware uefi (libvirt finds it by its descriptors)
  genisoimage       # NoCloud cidata config drives (re-IP)
  systemd           # systemd-analyze checks the appliance's service unit (issue 16)
  nsis              # makensis compiles the Windows installer script (tests/test_installer_script.py)
  tinyproxy         # a real forward proxy with basic auth for the egress tests (started by tests/egress_servers.py)
  # the boot image of the recovery tests: Debian's kernel, busybox, syslinux on FAT16 (tests/engine/recovery)
  linux-image-amd64 busybox-static syslinux syslinux-common mtools dosfstools kmod
  qemu-guest-agent  # its qemu-ga in the guest-agent variant of that image (boot detection by guest-ping)
)
# Azurite, the Azure Storage emulator (issue 15: the Azure vault's tests and bench), runs on Node.js. Debian's
# nodejs + npm where no Node.js is installed; a Node.js that brings its own npm (NodeSource's) is used as it is
# (Debian's npm package conflicts with it).
if ! command -v npm >/dev/null 2>&1; then SYSTEM_PACKAGES+=(nodejs npm); fi

missing=()
for p in "${SYSTEM_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "==> installing system packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $($PY --version)"
  $PY -m venv .venv
fi
echo "==> installing lifeboat and its dependencies into .venv"
pip_out=$(.venv/bin/pip install -q --disable-pip-version-check -e '.[dev]' 2>&1) || {
  printf '%s\n' "$pip_out" >&2; echo "ERROR: pip install -e '.[dev]' failed (above)" >&2; exit 1; }
printf '%s\n' "$pip_out" | grep -v -e "^WARNING: Location" -e '^$' || true
.venv/bin/python -c "import engine, zstandard, cryptography, keyring" 
echo "==> Azurite (Azure Storage emulator) into .tools/azurite"
if [ ! -x .tools/azurite/node_modules/.bin/azurite-blob ]; then
  mkdir -p .tools/azurite
  (cd .tools/azurite && npm install --no-audit --no-fund --loglevel=error azurite@3 >/dev/null)
fi
echo "==> building vcsim (tests/vcsim, cached in .cache/vcsim)"
tests/vcsim/build.sh >/dev/null
echo "==> the recovery host (libvirtd, started by hand when no systemd runs it): scripts/recovery-host.sh start"
scripts/recovery-host.sh start || echo "WARNING: the recovery host did not start; its tests will skip with the reason" >&2
echo "==> setup done"
