"""The vault target's view model without widgets (console/target.py) and the engine's target-health decision rule
(engine/appliance/vault_settings.py ``target_health``): which field an engine refusal lands on, the refusal once
machines are protected, and that unknown is shown as unknown. The same flows against a real Azurite, appliance and
agent are tests/ui/test_azure_target.py; this file covers the states those cannot reach quickly (stalled, error)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from console.target import AzureTarget, TargetModel, health_rows, outcome_of, validate
from engine.api import TargetHealthView, check_azure_target
from engine.appliance.vault_settings import STALL_AFTER, target_health
from engine.errors import CloudAuthFailed, ContainerMissing, EgressRefused, InvalidInput


def test_validate_names_each_missing_field() -> None:
    errs = validate(AzureTarget("", "", "key", ""))
    assert set(errs) == {"account_url", "container", "secret"}
    assert "https://" in validate(AzureTarget("ftp://x", "c", "key", "k"))["account_url"]
    assert validate(AzureTarget("https://a.blob.core.windows.net", "c", "sas", "sv=1")) == {}
    assert "secret" not in repr(AzureTarget("u", "c", "key", "topsecret")) and "topsecret" not in repr(
        AzureTarget("u", "c", "key", "topsecret"))


def test_engine_refusals_land_on_their_field() -> None:
    out = outcome_of(CloudAuthFailed("storage account X refused the credentials"))
    assert not out.ok and out.message.startswith("LB_CLOUD_AUTH_FAILED") and "key" in out.errors["secret"]
    out = outcome_of(ContainerMissing("container c does not exist"))
    assert set(out.errors) == {"container"}
    out = outcome_of(EgressRefused("refused: 127.0.0.1 is not on the allow-list", advice="Add it."))
    assert "allow-list" in out.errors["account_url"] and out.message.endswith("Add it.")
    out = outcome_of(InvalidInput("bad name", field="container"))
    assert out.errors == {"container": "bad name"}


def test_engine_checks_the_form_before_any_connection() -> None:
    for kw, field in ((dict(account_url="not a url", container="lifeboat", key="k"), "account_url"),
                      (dict(account_url="https://a.blob.core.windows.net", container="UPPER", key="k"), "container"),
                      (dict(account_url="https://a.blob.core.windows.net", container="lifeboat", key="  "), "secret")):
        with pytest.raises(InvalidInput) as exc:
            check_azure_target(**kw)  # type: ignore[arg-type]
        assert exc.value.details["field"] == field


def test_refusal_once_protected() -> None:
    assert TargetModel.refusal({"kind": "local", "protected": []}) is None
    why = TargetModel.refusal({"kind": "local", "protected": [f"vm{i}" for i in range(7)]})
    assert why and "7 machine(s) are already protected" in why and "and 2 more" in why
    text = TargetModel.describe({"kind": "azure", "account_url": "https://a", "container": "c", "auth": "sas",
                                 "credential_present": False, "in_use": "local"})
    assert "MISSING from the OS keyring" in text and "until it restarts" in text


def _rt(received: int, uploaded: int, last_upload: float | None, error: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(vault=SimpleNamespace(last_seq=uploaded), cache=SimpleNamespace(last_seq=received),
                           last_upload=last_upload, error=error)


def _app(runtimes: dict, vault: object = object()) -> SimpleNamespace:
    return SimpleNamespace(cfg={"vault": {"kind": "local", "path": "/v"}}, vault=vault, runtimes=runtimes,
                           network=None)


def test_target_health_never_better_than_known() -> None:
    now = time.time()
    assert target_health(_app({}, vault=None), now=now)["state"] == "unknown"
    assert target_health(_app({}), now=now)["state"] == "idle"
    h = target_health(_app({"vm1": _rt(5, 5, None)}), now=now)
    assert h["state"] == "unknown" and h["last_upload"] is None
    h = target_health(_app({"vm1": _rt(9, 5, None)}), now=now)
    assert h["state"] == "stalled" and h["upload_backlog_records"] == 4 and "since the appliance started" in h["detail"]
    h = target_health(_app({"vm1": _rt(9, 5, now - STALL_AFTER - 5)}), now=now)
    assert h["state"] == "stalled"
    h = target_health(_app({"vm1": _rt(9, 5, now - 1)}), now=now)
    assert h["state"] == "ok" and h["throttled"] is None and h["apply_backlog_records"] is None   # local vault
    h = target_health(_app({"vm1": _rt(9, 5, now - 1), "vm2": _rt(1, 1, now - 2, "LB_STORAGE: disk gone")}), now=now)
    assert h["state"] == "error" and h["error"] == "vm2: LB_STORAGE: disk gone"

    rows = dict(health_rows(TargetHealthView.from_dict(target_health(_app({"vm1": _rt(5, 5, None)}), now=now)), now))
    assert rows["Last upload"].startswith("unknown") and rows["Throttled"].startswith("not applicable")
    assert rows["State"].startswith("Unknown") and rows["Upload limit"].startswith("none")
