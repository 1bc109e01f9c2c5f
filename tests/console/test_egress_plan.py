"""The set-up wizard's Outbound network answers without widgets (``console.network.EgressPlan``): the Network and
cloud page's validation by field, the proxy tried against a real tinyproxy with basic authentication, and the
settings written into a home exactly as ``lifeboat egress`` stores them (the password in the keyring only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from console.network import EgressPlan
from console.target import outcome_of
from engine.api import init_home
from engine.egress import proxy_password_name
from engine.errors import EgressRefused, ProxyAuthFailed
from engine.secrets import get_secret
from tests.conftest import free_port
from tests.egress_servers import PROXY_PASSWORD, PROXY_USER, Tinyproxy, tinyproxy_fixture  # noqa: F401  (fixture)


def test_validation_by_field() -> None:
    assert EgressPlan().empty and EgressPlan().errors() == {}
    assert "wildcard" in EgressPlan(custom=("a*.b.example.com",)).errors()["custom"]
    assert "proxy_url" in EgressPlan(proxy_url="ftp://proxy:21").errors()
    assert "proxy_url" in EgressPlan(proxy_url="http://u:p@proxy:3128").errors()   # no password in the URL
    assert "proxy_password" in EgressPlan(proxy_url="http://proxy:3128", proxy_user="u").errors()
    assert "proxy_url" in EgressPlan(proxy_user="u", proxy_password="p").errors()  # a user with no proxy
    assert "bypass" in EgressPlan(proxy_url="http://proxy:3128", bypass=("a*.b.c",)).errors()
    ok = EgressPlan(("commercial",), ("10.1.2.3",), "http://proxy:3128", "u", "pw", ("10.0.0.0/8",))
    assert ok.errors() == {} and not ok.empty and "pw" not in repr(ok)
    s = ok.settings()
    assert s.allow_list() and "10.1.2.3" in s.allow_list() and s.proxy and s.proxy.user == "u"
    assert "pw" not in ok.describe() and "commercial preset" in ok.describe()
    form = EgressPlan.from_form({"presets": ["government"], "custom": "10.1.2.3\n*.corp.example, 10.9.9.9",
                                 "proxy_url": " http://proxy:3128 ", "proxy_user": "", "proxy_password": "",
                                 "bypass": ""})
    assert form.custom == ("10.1.2.3", "*.corp.example", "10.9.9.9") and form.proxy_url == "http://proxy:3128"


def test_new_home_refusals_go_to_the_outbound_network_fields() -> None:
    out = outcome_of(ProxyAuthFailed("the proxy refused"), new_home=True)
    assert out.errors == {"proxy_password": "LB_PROXY_AUTH: the proxy refused"} and "Back" in out.message
    out = outcome_of(EgressRefused("not on the list"), new_home=True)
    assert set(out.errors) == {"custom"} and out.message.startswith("LB_EGRESS_REFUSED")
    assert set(outcome_of(EgressRefused("not on the list")).errors) == {"account_url"}   # the settings dialog's


@pytest.mark.timeout(60)
async def test_try_proxy_then_write_into_a_home(tmp_path: Path, tinyproxy: Tinyproxy) -> None:
    wrong = EgressPlan(proxy_url=tinyproxy.url, proxy_user=PROXY_USER, proxy_password="Xq-not-it-7")
    out = await wrong.try_proxy()
    assert not out.ok and out.errors["proxy_password"].startswith("LB_PROXY_AUTH") and "Xq-not-it-7" not in out.message
    right = EgressPlan(("commercial",), ("127.0.0.1",), tinyproxy.url, PROXY_USER, PROXY_PASSWORD)
    assert (await right.try_proxy()).ok

    home = tmp_path / "home"
    cfg = init_home(home, control_port=free_port(), data_port=free_port(), listen="127.0.0.1")
    d = await right.write(home)
    assert d["proxy"]["url"] == tinyproxy.url and d["custom"] == ["127.0.0.1"] and d["revision"] == 1
    assert get_secret(proxy_password_name(cfg["appliance_id"])) == PROXY_PASSWORD
    assert PROXY_PASSWORD.encode() not in (home / "state.db").read_bytes()
    assert PROXY_PASSWORD not in json.dumps(d)
    d = await EgressPlan().write(home)      # back to direct: the password leaves the keyring
    assert d["proxy"] is None and d["revision"] == 2
    assert get_secret(proxy_password_name(cfg["appliance_id"])) is None
