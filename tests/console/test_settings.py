"""Settings: typed values, schema version, migrations, and a newer schema never overwritten."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSettings

from console.settings import SCHEMA_VERSION, SETTINGS, ConsoleSettings, migrate


def test_defaults_and_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "c.ini"
    s = ConsoleSettings.load(path)
    assert s.get("ui/refresh_ms") == 500 and s.get("ui/confirm_cleanup") is True
    s.set("ui/refresh_ms", "750")
    s.set("ui/confirm_cleanup", False)
    s.set("window/geometry", b"\x01\x02")
    s.save()
    again = ConsoleSettings.load(path)
    assert again.get("ui/refresh_ms") == 750
    assert again.get("ui/confirm_cleanup") is False
    assert again.get("window/geometry") == b"\x01\x02"
    assert QSettings(str(path), QSettings.Format.IniFormat).value("schema_version") in (SCHEMA_VERSION,
                                                                                       str(SCHEMA_VERSION))


def test_out_of_range_or_garbage_falls_back_to_default(tmp_path: Path) -> None:
    path = tmp_path / "c.ini"
    qs = QSettings(str(path), QSettings.Format.IniFormat)
    qs.setValue("schema_version", SCHEMA_VERSION)
    qs.setValue("ui/refresh_ms", "1")          # below the minimum
    qs.setValue("ui/rpo_history_minutes", "lots")
    qs.sync()
    s = ConsoleSettings.load(path)
    assert s.get("ui/refresh_ms") == 500 and s.get("ui/rpo_history_minutes") == 60


def test_v1_is_migrated_and_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "c.ini"
    qs = QSettings(str(path), QSettings.Format.IniFormat)
    qs.setValue("home", "/srv/lifeboat")
    qs.setValue("refresh", "0.25")
    qs.sync()
    s = ConsoleSettings.load(path)
    assert s.stored_version == SCHEMA_VERSION
    assert s.get("appliance/home") == "/srv/lifeboat" and s.get("ui/refresh_ms") == 250
    raw = QSettings(str(path), QSettings.Format.IniFormat)
    assert int(raw.value("schema_version")) == SCHEMA_VERSION and raw.value("appliance/home") == "/srv/lifeboat"


def test_newer_schema_is_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "c.ini"
    qs = QSettings(str(path), QSettings.Format.IniFormat)
    qs.setValue("schema_version", SCHEMA_VERSION + 5)
    qs.setValue("future/thing", "x")
    qs.sync()
    s = ConsoleSettings.load(path)
    s.set("ui/refresh_ms", 900)
    s.save()
    raw = QSettings(str(path), QSettings.Format.IniFormat)
    assert int(raw.value("schema_version")) == SCHEMA_VERSION + 5 and raw.value("future/thing") == "x"


def test_every_setting_has_a_type_default_and_migrations_chain() -> None:
    for spec in SETTINGS:
        assert isinstance(spec.default, spec.type), spec.key
    assert migrate({"home": "/x"}, 1)["appliance/home"] == "/x"
