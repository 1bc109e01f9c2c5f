"""Self-check of a frozen Lifeboat bundle: ``LIFEBOAT_BUNDLE_CHECK=1 dist/lifeboat/lifeboat``.

``--help`` only proves that the entry points start. What a frozen build loses is what static analysis cannot see:
modules imported lazily or by name (keyring backends through entry points, qasync's Qt binding), package metadata,
data files, Qt plugins (SVG icons), and C speedups that fall back silently to slow pure Python (aiohttp, multidict,
yarl, zstandard). Each check below exercises one of those; the process exits 1 if any fails. It also runs from a
source checkout (``python installers/bundle_check.py``), to tell a bundling fault from a code fault.

Needs no display: Qt runs on the offscreen platform unless QT_QPA_PLATFORM says otherwise.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
import traceback
from collections.abc import Callable

CHECKS: list[tuple[str, Callable[[], str]]] = []


def check(fn: Callable[[], str]) -> Callable[[], str]:
    CHECKS.append((fn.__name__, fn))
    return fn


@check
def own_modules() -> str:
    """Every bundled module of engine, console and ui imports (the engine imports most of its parts inside functions).

    A module that no product code imports is not bundled, and rightly so (engine.nbd.file_backend: tests only)."""
    names = []
    for pkg_name in ("engine", "console", "ui"):
        pkg = importlib.import_module(pkg_name)
        names.append(pkg_name)
        names += [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg_name + ".")]
    for name in names:
        importlib.import_module(name)
    return f"{len(names)} modules"


@check
def qt_app() -> str:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(sys.argv[:1])
    return f"platform {app.platformName()}"


@check
def resources() -> str:
    """style.qss and every SVG icon, rendered: needs the data files and Qt's SVG icon-engine plugin."""
    from ui import theme

    base = theme.resources_dir()
    if not (base / "style.qss").is_file():
        raise AssertionError(f"no style.qss in {base}")
    icons = sorted(p.stem for p in (base / "icons").glob("*.svg"))
    if not icons:
        raise AssertionError(f"no icons in {base / 'icons'}")
    blank = [n for n in icons if theme.icon(n).pixmap(32, 32).isNull()]
    if blank:
        raise AssertionError(f"icons that do not render: {blank}")
    return f"{base}: style.qss, {len(icons)} icons render"


@check
def theme_and_plot() -> str:
    """The stylesheet applied and a pyqtgraph plot drawn, as the main window does."""
    import pyqtgraph as pg
    from PySide6.QtWidgets import QApplication

    from ui import theme

    app = QApplication.instance()
    assert isinstance(app, QApplication)
    theme.apply(app)
    if not app.styleSheet():
        raise AssertionError("stylesheet not applied")
    w = pg.PlotWidget()
    w.plot([0, 1, 2], [3, 1, 2])
    w.resize(200, 100)
    if w.grab().isNull():
        raise AssertionError("plot did not render")
    from pyqtgraph.Qt import QtOpenGLWidgets

    if type(QtOpenGLWidgets).__name__ == "FailedImport":
        raise AssertionError("pyqtgraph could not import QtOpenGLWidgets")
    import pydoc  # noqa: F401  pyqtgraph.parametertree needs it

    return f"pyqtgraph {pg.__version__}"


@check
def qasync_binding() -> str:
    import qasync

    if qasync.QtModuleName != "PySide6":
        raise AssertionError(f"qasync picked {qasync.QtModuleName}")
    return "PySide6"


@check
def keyring_backends() -> str:
    """Backends are found through keyring's entry points, so its metadata must be bundled."""
    from importlib import metadata

    import keyring.backend
    import keyring.backends.SecretService
    import keyring.backends.Windows

    eps = {ep.name for ep in metadata.entry_points(group="keyring.backends")}
    if not {"Windows", "SecretService"} <= eps:
        raise AssertionError(f"keyring entry points missing: have {sorted(eps)}")
    kinds = sorted(type(k).__module__ + "." + type(k).__name__ for k in keyring.backend.get_all_keyring())
    if sys.platform == "win32" and not any("WinVaultKeyring" in k for k in kinds):
        raise AssertionError(f"no Windows Credential Manager backend: {kinds}")
    chosen = type(keyring.get_keyring())
    return f"viable: {', '.join(kinds)}; chosen: {chosen.__module__}.{chosen.__name__}"


@check
def not_bundled() -> str:
    """Development-only and unwanted packages stay out (keyrings.alt would store the vault key in plain text)."""
    present = []
    for name in ("keyrings.alt", "pytest", "tkinter", "PyQt5", "PyQt6", "PySide2", "mypy", "IPython"):
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        present.append(name)
    if present and getattr(sys, "frozen", False):
        raise AssertionError(f"bundled but should not be: {present}")
    return "none present" if not present else f"present (not frozen, fine): {present}"


@check
def crypto_compression_hashing() -> str:
    import xxhash
    import zstandard
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key = AESGCM.generate_key(bit_length=256)
    data = os.urandom(4096)
    nonce = os.urandom(12)
    if AESGCM(key).decrypt(nonce, AESGCM(key).encrypt(nonce, data, b""), b"") != data:
        raise AssertionError("AES-GCM round trip")
    if zstandard.backend != "cext":
        raise AssertionError(f"zstandard runs on its {zstandard.backend} backend, not the C one")
    if zstandard.ZstdDecompressor().decompress(zstandard.ZstdCompressor(level=1).compress(data)) != data:
        raise AssertionError("zstd round trip")
    if xxhash.xxh3_64_hexdigest(b"") != "2d06800538d394c2":
        raise AssertionError("xxh3_64 of b''")
    return f"cryptography AES-GCM, zstandard {zstandard.__version__} (cext), xxhash {xxhash.VERSION}"


@check
def aiohttp_speedups() -> str:
    """aiohttp, multidict and yarl fall back to pure Python without a word if their C extensions are missing."""
    import aiohttp.http_parser
    import multidict
    import yarl._quoting

    slow = []
    if aiohttp.http_parser.HttpRequestParser is aiohttp.http_parser.HttpRequestParserPy:
        slow.append("aiohttp http parser")
    if not multidict.MultiDict.__module__.endswith("_multidict"):
        slow.append("multidict")
    if not yarl._quoting._Quoter.__module__.endswith("_quoting_c"):
        slow.append("yarl quoting")
    if slow:
        raise AssertionError(f"pure-Python fallbacks in use: {slow}")
    return f"aiohttp {aiohttp.__version__} with C parser, multidict, yarl"


@check
def pyvmomi_types() -> str:
    """pyVmomi loads its type tables in try/except ImportError: a missing one only shows at the first vCenter call."""
    from pyVim import connect  # noqa: F401
    from pyVmomi import vim, vmodl

    names = [vim.VirtualMachine, vim.fault.InvalidLogin, vim.view.ContainerView, vmodl.query.PropertyCollector]
    return f"{len(names)} types resolved"


@check
def windows_service_pieces() -> str:
    """What the Windows service needs at run time (lifeboat.exe appliance service-host): pywin32's service framework
    and event log, all imported inside functions (so listed in the spec's hidden imports). Windows builds only."""
    if sys.platform != "win32":
        return "not a Windows build: nothing to check"
    names = ["win32serviceutil", "win32service", "servicemanager", "pywintypes", "win32evtlog", "win32evtlogutil",
             "win32timezone", "engine.platform.windows_service"]
    for name in names:
        importlib.import_module(name)
    import win32service

    if not os.path.isfile(win32service.__file__ or ""):
        raise AssertionError(f"win32service has no file on disk (the event log's message file): {win32service.__file__}")
    return f"{len(names)} modules; event-log messages from {win32service.__file__}"


@check
def versions_in_crash_report() -> str:
    """console.errors.versions() reads package metadata: bundled for the packages a crash report names."""
    from console.errors import versions

    v = versions()
    missing = [k for k, val in v.items() if val == "not installed"]
    if missing:
        raise AssertionError(f"no metadata for {missing}")
    return ", ".join(f"{k} {val}" for k, val in v.items() if k not in ("platform",))


def main() -> int:
    frozen = bool(getattr(sys, "frozen", False))
    print(f"lifeboat bundle check ({'frozen' if frozen else 'source'}: {sys.executable})", flush=True)
    failed = 0
    for name, fn in CHECKS:
        try:
            detail = fn()
        except Exception as exc:
            failed += 1
            print(f"FAIL {name}: {type(exc).__name__}: {exc}", flush=True)
            traceback.print_exc(file=sys.stdout)
        else:
            print(f"ok   {name}: {detail}", flush=True)
    print(f"{len(CHECKS) - failed}/{len(CHECKS)} checks passed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
