"""Console settings: declared as data (key, default, type, label), stored with a schema version and migrated.

The settings page is generated from ``SETTINGS`` (the vorta habit); the store is a ``QSettings`` INI file in the
platform's config folder (platformdirs), or any path given (tests, ``--settings``). A stored schema older than
``SCHEMA_VERSION`` is migrated step by step on load (the napari habit); a newer one is read as far as it is
understood and never written back over.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import platformdirs
from PySide6.QtCore import QByteArray, QSettings

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
APP_NAME = "lifeboat"


@dataclass(frozen=True, slots=True)
class SettingSpec:
    """One setting: its key in the store, type, default and (if the user may change it) a label and help."""
    key: str
    type: type
    default: Any
    label: str = ""
    help: str = ""
    minimum: float | None = None
    maximum: float | None = None

    @property
    def user_visible(self) -> bool:
        return bool(self.label)


SETTINGS: tuple[SettingSpec, ...] = (
    SettingSpec("appliance/home", str, "", "Appliance home", "Folder of the appliance the console attaches to (--home overrides)."),
    SettingSpec("ui/refresh_ms", int, 500, "Table refresh (ms)",
                "How often live machine rows are redrawn; lower is smoother, higher is lighter.", 100, 5000),
    SettingSpec("ui/rpo_history_minutes", int, 60, "RPO history (minutes)",
                "How much RPO history each machine keeps in memory for its graph.", 5, 240),
    SettingSpec("ui/notification_seconds", int, 8, "Notification time (s)",
                "How long a notification stays before it fades to the Jobs and events log.", 2, 120),
    SettingSpec("ui/confirm_cleanup", bool, True, "Confirm drill clean-up",
                "Ask before a drill's scratch data and exported images are deleted."),
    SettingSpec("ui/compact_rows", bool, False),   # the machines table's Compact toggle (remembered)
    SettingSpec("ui/close_notice_shown", bool, False),   # "the appliance keeps running" said once (no tray)
    SettingSpec("ui/tray_notice_shown", bool, False),    # "the console is in the tray" said once
    SettingSpec("window/geometry", bytes, b""),
    SettingSpec("window/state", bytes, b""),
    SettingSpec("window/page", int, 0),
    SettingSpec("window/splitter", bytes, b""),
)
SPECS: dict[str, SettingSpec] = {s.key: s for s in SETTINGS}


def _v1_to_v2(raw: dict[str, Any]) -> dict[str, Any]:
    """v1 kept flat keys ``home``, ``geometry`` and ``refresh`` (seconds)."""
    out = dict(raw)
    if "home" in out:
        out["appliance/home"] = out.pop("home")
    if "geometry" in out:
        out["window/geometry"] = out.pop("geometry")
    if "refresh" in out:
        out["ui/refresh_ms"] = int(float(out.pop("refresh")) * 1000)
    return out


MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _v1_to_v2}


def migrate(raw: dict[str, Any], version: int) -> dict[str, Any]:
    """Apply every migration from ``version`` up to ``SCHEMA_VERSION``."""
    while version < SCHEMA_VERSION:
        step = MIGRATIONS.get(version)
        if step is None:
            raise ValueError(f"no migration from settings schema {version}")
        raw = step(raw)
        version += 1
    return raw


def default_path() -> Path:
    return Path(platformdirs.user_config_dir(APP_NAME, appauthor=False)) / "console.ini"


def default_home() -> Path:
    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False)) / "appliance"


def coerce(spec: SettingSpec, value: Any) -> Any:
    """A stored value (QSettings INI returns strings) → the spec's type; the default when it does not convert."""
    if value is None:
        return spec.default
    try:
        if spec.type is bool:
            return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")
        if spec.type is bytes:
            return bytes(value.data()) if isinstance(value, QByteArray) else bytes(value)
        v = spec.type(value)
        if spec.minimum is not None and v < spec.minimum or spec.maximum is not None and v > spec.maximum:
            return spec.default
        return v
    except (TypeError, ValueError):
        log.warning("setting %s: ignoring unreadable value %r", spec.key, value)
        return spec.default


@dataclass
class ConsoleSettings:
    """Typed settings backed by a QSettings INI file. Read with ``get``, change with ``set``, persist with ``save``."""
    path: Path = field(default_factory=default_path)
    values: dict[str, Any] = field(default_factory=dict)
    stored_version: int = SCHEMA_VERSION

    @classmethod
    def load(cls, path: Path | None = None) -> ConsoleSettings:
        self = cls(path or default_path())
        qs = self._qsettings()
        raw = {k: qs.value(k) for k in qs.allKeys() if k != "schema_version"}
        version = int(qs.value("schema_version", 0) or 0) or (1 if raw else SCHEMA_VERSION)
        self.stored_version = version
        if version < SCHEMA_VERSION:
            raw = migrate(raw, version)
        self.values = {s.key: coerce(s, raw.get(s.key)) for s in SETTINGS}
        if version < SCHEMA_VERSION:
            self.save()
        return self

    def _qsettings(self) -> QSettings:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return QSettings(str(self.path), QSettings.Format.IniFormat)

    def get(self, key: str) -> Any:
        return self.values.get(key, SPECS[key].default)

    def set(self, key: str, value: Any) -> None:
        self.values[key] = coerce(SPECS[key], value)

    def save(self) -> None:
        if self.stored_version > SCHEMA_VERSION:
            log.warning("settings %s are from a newer console (schema %s); not overwriting", self.path,
                        self.stored_version)
            return
        qs = self._qsettings()
        qs.setValue("schema_version", SCHEMA_VERSION)
        for spec in SETTINGS:
            v = self.get(spec.key)
            qs.setValue(spec.key, QByteArray(v) if spec.type is bytes else v)
        qs.sync()
        self.stored_version = SCHEMA_VERSION


def visible_settings() -> list[SettingSpec]:
    return [s for s in SETTINGS if s.user_visible]


__all__ = ["ConsoleSettings", "SettingSpec", "SETTINGS", "SCHEMA_VERSION", "migrate", "visible_settings",
           "default_home", "default_path"]
