"""The replication core's key end-to-end test (tests/engine/test_replication_e2e.py) with the vault on Azure Blob
(Azurite): every bookmarked point, crash-consistent points, times between them and the latest, recovered
byte-identical through export and NBD drills. Plus `lifeboat vault set/show` and its refusals."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from engine import net
from engine.appliance.new_home import init_home
from engine.appliance.vault_settings import set_azure_vault, show_vault
from engine.errors import CloudAuthFailed, CloudUnreachable, ContainerMissing
from tests.azurite import KEY, Azurite, azurite_missing
from tests.conftest import free_port
from tests.egress_servers import PROXY_PASSWORD, PROXY_USER, Tinyproxy, tinyproxy_fixture  # noqa: F401 (fixture)
from tests.engine.harness import Site
from tests.engine.test_replication_e2e import every_point_fails_over_byte_identical


@pytest.fixture(scope="module", name="azurite")
def azurite_fixture(tmp_path_factory):
    why = azurite_missing()
    if why:
        pytest.skip(why)
    az = Azurite(tmp_path_factory.mktemp("azurite"))
    az.start()
    yield az
    az.stop()


def _init(site: Site) -> None:
    init_home(site.ahome, control_port=free_port(), data_port=free_port(), listen="127.0.0.1")


async def test_every_point_byte_identical_from_azure(azurite, tmp_path: Path) -> None:
    container = "e2e" + uuid.uuid4().hex[:10]
    azurite.create_container(container)

    async def prepare(site: Site) -> None:
        _init(site)
        out = set_azure_vault(site.ahome, azurite.url, container, key=KEY)
        assert out["kind"] == "azure" and out["credential_present"]
        cfg = json.loads((site.ahome / "appliance.json").read_text())
        assert KEY not in json.dumps(cfg)            # the key is only in the keyring
        cfg["vault"]["log_bytes"] = 1 << 20          # many cache logs
        (site.ahome / "appliance.json").write_text(json.dumps(cfg))

    await every_point_fails_over_byte_identical(tmp_path, prepare)
    # the data really is in the container: logs, page blobs, snapshots as points
    from engine.vault.azure.rest import AzureBlobClient, Credential
    c = AzureBlobClient(azurite.url, container, Credential(key=KEY))
    items = list(c.list_blobs("vm1/", snapshots=True))
    assert any(i.name.startswith("vm1/logs/") for i in items)
    snaps = [i for i in items if i.name.startswith("vm1/disks/") and i.snapshot]
    assert sum(1 for i in snaps if i.metadata.get("lbkind") == "app-consistent") >= 6   # 3 bookmarks × 2 disks
    assert sum(1 for i in snaps if i.metadata.get("lbkind") == "crash-consistent") >= 10


async def test_every_point_byte_identical_from_azure_through_the_authenticated_proxy(
        azurite, tinyproxy: Tinyproxy, tmp_path: Path) -> None:
    """The same scenario with the egress settings an operator sets with the CLI: an allow-list holding the storage
    endpoint only, and an HTTP CONNECT proxy with basic authentication (tinyproxy; the password in the keyring).
    Every request to the vault goes through the proxy: its own log shows the tunnels."""
    container = "px" + uuid.uuid4().hex[:10]
    azurite.create_container(container)
    target = f"127.0.0.1:{azurite.port}"
    old_policy = net.egress_policy()

    async def prepare(site: Site) -> None:
        _init(site)
        home = str(site.ahome)
        # an allow-list without the storage endpoint: `vault set` is refused before any packet, nothing changes
        assert _cli("egress", "allow", "--home", home, "--preset", "commercial").returncode == 0
        before = (site.ahome / "appliance.json").read_bytes()
        r = _cli("vault", "set", "--home", home, "--kind", "azure", "--account-url", azurite.url, "--container",
                 container, "--key-stdin", stdin=KEY + "\n")
        assert r.returncode != 0 and "LB_EGRESS_REFUSED" in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert (site.ahome / "appliance.json").read_bytes() == before
        for args, stdin in ((("egress", "allow", "--home", home, "--add", "127.0.0.1"), ""),
                            (("egress", "proxy", "--home", home, "--url", tinyproxy.url, "--user", PROXY_USER,
                              "--password-stdin"), PROXY_PASSWORD + "\n"),
                            (("vault", "set", "--home", home, "--kind", "azure", "--account-url", azurite.url,
                              "--container", container, "--key-stdin"), KEY + "\n")):
            r = _cli(*args, stdin=stdin)
            assert r.returncode == 0, r.stderr
            assert PROXY_PASSWORD not in r.stdout + r.stderr and KEY not in r.stdout + r.stderr
        # `vault set` checked the connection as the appliance will make it: through the proxy
        assert tinyproxy.connects(target) >= 1
        shown = json.loads(_cli("egress", "show", "--home", home, "--json").stdout)
        assert PROXY_PASSWORD not in json.dumps(shown)

    try:
        before = tinyproxy.connects(target)
        await every_point_fails_over_byte_identical(tmp_path, prepare)
        tunnels = tinyproxy.connects(target)
        assert tunnels > before, "the vault's traffic did not go through the proxy"
        print(f"{tunnels} CONNECT tunnels to {target} in tinyproxy's log")
    finally:
        net.set_egress_policy(old_policy)
    from engine.vault.azure.rest import AzureBlobClient, Credential
    c = AzureBlobClient(azurite.url, container, Credential(key=KEY))
    snaps = [i for i in c.list_blobs("vm1/", snapshots=True) if i.name.startswith("vm1/disks/") and i.snapshot]
    assert sum(1 for i in snaps if i.metadata.get("lbkind") == "app-consistent") >= 6


def _cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], input=stdin, capture_output=True, text=True,
                          timeout=120)


def test_vault_set_refuses_bad_input_and_changes_nothing(azurite, tmp_path: Path) -> None:
    container = "cli" + uuid.uuid4().hex[:10]
    azurite.create_container(container)
    site = Site(tmp_path)
    _init(site)
    before = (site.ahome / "appliance.json").read_bytes()
    for kw, err in ((dict(key="QUJD" * 22), CloudAuthFailed), (dict(key=KEY, container="missing-one"),
                                                              ContainerMissing)):
        with pytest.raises(err):
            set_azure_vault(site.ahome, azurite.url, kw.pop("container", container), **kw)  # type: ignore[arg-type]
        assert (site.ahome / "appliance.json").read_bytes() == before
    with pytest.raises(CloudUnreachable):
        set_azure_vault(site.ahome, "http://127.0.0.1:9/devstoreaccount1", container, key=KEY, retry_for=1)
    assert show_vault(site.ahome)["kind"] == "local"

    # the command line: wrong key → clear LB_ error on stderr and in --json, exit code non-zero, nothing changed
    home = str(site.ahome)
    r = _cli("vault", "set", "--home", home, "--kind", "azure", "--account-url", azurite.url, "--container",
             container, "--key-stdin", "--json", stdin="QUJD" * 22 + "\n")
    assert r.returncode != 0 and "LB_CLOUD_AUTH_FAILED" in r.stderr
    assert json.loads(r.stdout)["error"]["code"] == "LB_CLOUD_AUTH_FAILED"
    r = _cli("vault", "set", "--home", home, "--kind", "azure", "--account-url", azurite.url, "--container",
             "nope-nope", "--key-stdin", stdin=KEY + "\n")
    assert r.returncode != 0 and "LB_CONTAINER_MISSING" in r.stderr and "Traceback" not in r.stderr
    assert (site.ahome / "appliance.json").read_bytes() == before
    r = _cli("vault", "set", "--home", home, "--kind", "azure", "--account-url", azurite.url, "--container",
             container, "--key-stdin", stdin=KEY + "\n")
    assert r.returncode == 0, r.stderr
    assert KEY not in r.stdout + r.stderr
    r = _cli("vault", "show", "--home", home, "--json")
    shown = json.loads(r.stdout)
    assert shown["kind"] == "azure" and shown["container"] == container and shown["credential_present"]
    assert KEY not in r.stdout
    _ = io
