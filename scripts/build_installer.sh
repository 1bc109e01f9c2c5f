#!/usr/bin/env bash
# Build Lifeboat's one-folder bundle with PyInstaller (installers/lifeboat.spec), smoke-test it, and compile the
# Windows installer script (installers/lifeboat.nsi) with makensis against it.  Usage: scripts/build_installer.sh
#
# On this Linux machine the result validates the spec and the NSIS script; it is not a Windows release. PyInstaller
# cannot cross-build: a real Windows installer needs the PyInstaller step run on Windows (installers/README.md),
# then makensis (on Windows, or here) over that dist\lifeboat folder. Compiled over a Linux bundle, the installer
# is named ...-setup-NOT-A-WINDOWS-PAYLOAD.exe.
#
# Environment:
#   NSIS_COMPRESSOR=zlib|lzma   makensis compressor (default zlib: ~3x faster to compile; releases use lzma,
#                               the .nsi's default)
#   SKIP_NSIS=1                 stop after the bundle and its smoke tests
# Outputs: dist/lifeboat/ (the bundle), dist/lifeboat-VERSION-setup*.exe, build/ (PyInstaller's work folder).
# Installs what it lacks: the `packaging` extra of pyproject.toml into .venv, Debian's nsis. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=.venv/bin/python
NSIS_COMPRESSOR=${NSIS_COMPRESSOR:-zlib}

step() { echo "==> $*"; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
mib() { du -sLm "$1" | cut -f1; }  # -L: PyInstaller links duplicate libraries on Linux; count what ships

# --- tools ------------------------------------------------------------------------------------------------------
if [ ! -x "$PY" ]; then
  step "no .venv: running scripts/setup.sh"
  scripts/setup.sh
fi
if ! "$PY" -c "import PyInstaller" 2>/dev/null; then
  # The requirements of the `packaging` extra, read from pyproject.toml so there is one place that pins them.
  mapfile -t reqs < <("$PY" -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["packaging"], sep="\n")')
  step "installing the packaging extra into .venv: ${reqs[*]}"
  "$PY" -m pip install -q --disable-pip-version-check "${reqs[@]}" 2>&1 | grep -v "^WARNING: Location" || true
fi
if [ "${SKIP_NSIS:-}" != 1 ] && ! command -v makensis >/dev/null; then
  step "installing Debian's nsis (makensis)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nsis >/dev/null 2>&1 || {
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nsis >/dev/null
  }
fi
VERSION=$("$PY" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
# Windows version resources take four numbers: 1.2.3rc1 -> 1.2.3.0
VERSION_NUMERIC=$("$PY" -c 'import re, sys; n = re.findall(r"\d+", sys.argv[1].split("+")[0])[:3]; print(".".join(n + ["0"] * (4 - len(n))))' "$VERSION")
echo "lifeboat $VERSION, $("$PY" -m PyInstaller --version 2>/dev/null | sed 's/^/PyInstaller /'), $(command -v makensis >/dev/null && makensis -VERSION | sed 's/^/makensis /')"

# --- bundle -----------------------------------------------------------------------------------------------------
step "PyInstaller one-folder build (installers/lifeboat.spec)"
t0=$(now)
"$PY" -m PyInstaller --noconfirm --clean --log-level WARN --distpath dist --workpath build installers/lifeboat.spec
build_s=$(secs "$t0" "$(now)")
BUNDLE=dist/lifeboat
echo "bundle: $BUNDLE, $(mib "$BUNDLE") MiB, built in ${build_s} s"

# --- smoke tests ------------------------------------------------------------------------------------------------
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
# Keep the console's settings and any appliance data out of the user's folders.
export XDG_CONFIG_HOME=$TMP/config XDG_DATA_HOME=$TMP/data XDG_CACHE_HOME=$TMP/cache
# The test suite's keyring override names keyrings.alt, which the bundle must not (and does not) contain.
unset PYTHON_KEYRING_BACKEND

step "smoke: lifeboat --help"
"$BUNDLE/lifeboat" --help >"$TMP/cli-help" || { cat "$TMP/cli-help"; echo "FAIL: lifeboat --help" >&2; exit 1; }
grep -q "usage: lifeboat" "$TMP/cli-help" || { cat "$TMP/cli-help"; echo "FAIL: no usage from lifeboat --help" >&2; exit 1; }
step "smoke: lifeboat-console --help (offscreen)"
QT_QPA_PLATFORM=offscreen "$BUNDLE/lifeboat-console" --help >"$TMP/console-help" || {
  cat "$TMP/console-help"; echo "FAIL: lifeboat-console --help" >&2; exit 1; }
grep -q "usage: lifeboat-console" "$TMP/console-help" || {
  cat "$TMP/console-help"; echo "FAIL: no usage from lifeboat-console --help" >&2; exit 1; }

step "smoke: bundle self-check (installers/bundle_check.py, frozen)"
LIFEBOAT_BUNDLE_CHECK=1 QT_QPA_PLATFORM=offscreen "$BUNDLE/lifeboat" | tee "$TMP/check.log" ||
  { echo "FAIL: bundle self-check" >&2; exit 1; }
# The bundled metadata is whatever the build environment resolved for "lifeboat" (the editable install's, or a stale
# lifeboat.egg-info in the checkout): it must carry this version, or crash reports would name the wrong one.
grep -q "lifeboat $VERSION," "$TMP/check.log" || { echo "FAIL: the bundle's metadata is not lifeboat $VERSION" >&2; exit 1; }

step "smoke: lifeboat-console --synthetic 50 shows its main window, then stops on SIGTERM"
QT_QPA_PLATFORM=offscreen "$BUNDLE/lifeboat-console" --synthetic 50 --settings "$TMP/console.ini" -v \
  >"$TMP/console.log" 2>&1 &
pid=$!
sleep 8
if ! kill -0 "$pid" 2>/dev/null; then
  wait "$pid" && rc=0 || rc=$?
  cat "$TMP/console.log"; echo "FAIL: lifeboat-console --synthetic exited early (status $rc)" >&2; exit 1
fi
kill -TERM "$pid"
for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
if kill -0 "$pid" 2>/dev/null; then
  kill -KILL "$pid"; cat "$TMP/console.log"; echo "FAIL: lifeboat-console did not stop on SIGTERM" >&2; exit 1
fi
wait "$pid" && rc=0 || rc=$?
if [ "$rc" -ne 0 ] || grep -q "Traceback" "$TMP/console.log"; then
  cat "$TMP/console.log"; echo "FAIL: lifeboat-console exited with status $rc or logged a traceback" >&2; exit 1
fi
echo "console ran 8 s and stopped cleanly"

# The frozen CLI doing real work: an appliance home (certificates, state DB) with its vault key stored through the
# Secret Service backend (a keyring backend that only an entry point names), in a private D-Bus session and HOME.
if command -v dbus-run-session >/dev/null && command -v gnome-keyring-daemon >/dev/null; then
  step "smoke: lifeboat appliance init, vault key in the Secret Service (private gnome-keyring)"
  HOME=$TMP/home XDG_DATA_HOME=$TMP/home/data dbus-run-session -- sh -c '
    printf smoke | gnome-keyring-daemon --unlock --components=secrets >/dev/null 2>&1
    "$1/lifeboat" appliance init --home "$2" && LIFEBOAT_BUNDLE_CHECK=1 QT_QPA_PLATFORM=offscreen "$1/lifeboat" \
      | grep "keyring_backends"' sh "$BUNDLE" "$TMP/appliance" >"$TMP/init.log" 2>&1 || {
    cat "$TMP/init.log"; echo "FAIL: lifeboat appliance init under gnome-keyring" >&2; exit 1; }
  grep -q "chosen: keyring.backends.SecretService" "$TMP/init.log" || {
    cat "$TMP/init.log"; echo "FAIL: the bundle did not choose the Secret Service keyring" >&2; exit 1; }
  echo "appliance home initialised; keyring: keyring.backends.SecretService"
else
  echo "skipped: appliance init under the Secret Service (no dbus-run-session/gnome-keyring-daemon;" \
       "scripts/setup.sh installs them)"
fi

if [ "${SKIP_NSIS:-}" = 1 ]; then
  echo "SUMMARY version=$VERSION build_s=$build_s bundle_mib=$(mib "$BUNDLE") installer=skipped"
  exit 0
fi

# --- Windows installer script -----------------------------------------------------------------------------------
# Validates installers/lifeboat.nsi (syntax, includes, paths, version) over this Linux bundle. A release installer
# is the same command over a dist\lifeboat built by PyInstaller on Windows.
step "makensis installers/lifeboat.nsi ($NSIS_COMPRESSOR) over $BUNDLE"
rm -f dist/lifeboat-*-setup*.exe
t0=$(now)
makensis -V2 -WX \
  -DVERSION="$VERSION" -DVERSION_NUMERIC="$VERSION_NUMERIC" -DCOMPRESSOR="$NSIS_COMPRESSOR" \
  -DDIST_DIR="$ROOT/$BUNDLE" -DICON="$ROOT/build/lifeboat/lifeboat.ico" \
  -DOUT_FILE="$ROOT/dist/lifeboat-$VERSION-setup-NOT-A-WINDOWS-PAYLOAD.exe" \
  -DALLOW_NON_WINDOWS_PAYLOAD installers/lifeboat.nsi
nsis_s=$(secs "$t0" "$(now)")
INSTALLER=$(ls dist/lifeboat-"$VERSION"-setup*.exe)
echo "installer: $INSTALLER, $(mib "$INSTALLER") MiB, compiled in ${nsis_s} s (validates the script; not for release)"

# If wine is here (Debian: apt-get install wine64), run the installer for real in a throw-away prefix: silent
# install, then check files, Start-menu shortcut and the uninstall entry; silent uninstall, then check they are gone.
WINE=$(command -v wine64 || command -v wine || { [ -x /usr/lib/wine/wine64 ] && echo /usr/lib/wine/wine64; } || true)
wine_check=skipped
if [ -n "$WINE" ]; then
  step "wine: silent install and uninstall of $INSTALLER"
  WINESERVER=$(command -v wineserver || echo "$(dirname "$WINE")/wineserver")
  export WINEPREFIX=$TMP/wine WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml="  # no Mono/Gecko prompts
  wine_done() { "$WINESERVER" -w; }
  "$WINE" wineboot -i >/dev/null 2>&1; wine_done
  D="$WINEPREFIX/drive_c/Program Files/Lifeboat"
  LNK="$WINEPREFIX/drive_c/ProgramData/Microsoft/Windows/Start Menu/Programs/Lifeboat.lnk"
  UNINST='HKLM\Software\Microsoft\Windows\CurrentVersion\Uninstall\Lifeboat'
  fail() { echo "FAIL (wine): $*" >&2; "$WINESERVER" -k || true; exit 1; }
  # /NOSERVICE: the payload is a Linux build (no lifeboat.exe to install a service with); the service section is
  # checked by tests/test_installer_script.py
  "$WINE" "$ROOT/$INSTALLER" /S /NOSERVICE; wine_done
  [ -f "$D/_internal/resources/style.qss" ] && [ -f "$D/uninstall.exe" ] || fail "files not installed in $D"
  [ -f "$LNK" ] || fail "no Start-menu shortcut"
  "$WINE" reg query "$UNINST" /v DisplayVersion 2>/dev/null | tr -d '\r' | grep -q "REG_SZ *$VERSION\$" ||
    fail "no uninstall entry with DisplayVersion $VERSION"
  "$WINE" 'C:\Program Files\Lifeboat\uninstall.exe' /S; wine_done; sleep 1; wine_done  # it re-runs from %TEMP%
  [ ! -e "$D/_internal" ] && [ ! -e "$D/uninstall.exe" ] || fail "uninstall left the program in $D"
  [ ! -e "$LNK" ] || fail "uninstall left the shortcut"
  if "$WINE" reg query "$UNINST" >/dev/null 2>&1; then fail "uninstall left the registry entry"; fi
  "$WINESERVER" -k 2>/dev/null || true
  wine_check=passed
  echo "installed, registered, shortcut made; uninstalled cleanly"
else
  echo "skipped: wine round trip (no wine; Debian: apt-get install wine64)"
fi
echo "SUMMARY version=$VERSION build_s=$build_s bundle_mib=$(mib "$BUNDLE") nsis_s=$nsis_s installer_mib=$(mib "$INSTALLER") wine=$wine_check installer=$INSTALLER"
