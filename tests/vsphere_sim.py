"""The vCenter simulator for every test that needs one (tests/engine/vsphere, tests/ui): vcsim is built once from
Debian's govmomi source (tests/vcsim/build.sh, cached in .cache/vcsim) and started per test on a free port; tests talk
to it with real pyVmomi over real TLS. Conftests re-export the fixtures: ``from tests.vsphere_sim import ...``."""

from __future__ import annotations

import os
import select
import shutil
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "tests" / "vcsim" / "build.sh"
PACKAGES = ["golang-go", "golang-github-vmware-govmomi-dev"]


def _install_go() -> str | None:
    """Install Go and govmomi's source from Debian when we can (root + apt); a reason string when we cannot."""
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return "Go/govmomi are missing and cannot be installed here (needs root and apt-get): " + " ".join(PACKAGES)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    p = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES],
                       capture_output=True, text=True, env=env, timeout=900)
    if p.returncode != 0:
        return f"apt-get install {' '.join(PACKAGES)} failed: {p.stderr[-500:]}"
    return None


@pytest.fixture(scope="session")
def vcsim_binary() -> Path:
    p = subprocess.run([str(BUILD)], capture_output=True, text=True, timeout=900)
    if p.returncode == 3:  # build.sh: toolchain or source missing
        why = _install_go()
        if why:
            pytest.skip(why)
        p = subprocess.run([str(BUILD)], capture_output=True, text=True, timeout=900)
    if p.returncode != 0:
        pytest.fail(f"building vcsim failed: {p.stderr[-2000:]}")
    return Path(p.stdout.strip().splitlines()[-1])


@dataclass
class Sim:
    proc: subprocess.Popen
    host: str
    port: int
    user: str
    password: str

    def der(self) -> bytes:
        pem = ssl.get_server_certificate((self.host, self.port))
        return ssl.PEM_cert_to_DER_cert(pem)

    def client(self) -> Any:
        """A pyVmomi session for the test itself (ground truth, power operations). Blocking: use a thread."""
        from pyVim.connect import Connect
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return Connect(host=self.host, port=self.port, user=self.user, pwd=self.password, sslContext=ctx)

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()  # main.go exits when stdin closes
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def vcsim(vcsim_binary: Path) -> Iterator[Any]:
    """``start(*flags, listen=..., cert=..., key=..., password=...) -> Sim``; every simulator is stopped after."""
    sims: list[Sim] = []

    def start(*flags: str, listen: str = "127.0.0.1:0", cert: Path | None = None, key: Path | None = None,
              user: str = "admin", password: str = "s3cret-Pa55word!", timeout: float = 60.0) -> Sim:
        cmd = [str(vcsim_binary), "-l", listen, "-username", user, "-password", password, *flags]
        if cert and key:
            cmd += ["-tlscert", str(cert), "-tlskey", str(key)]
        # The password is a flag of the *simulator* (the test's stand-in vCenter); Lifeboat's own processes are
        # what the secrecy tests check.
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True)
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"vcsim exited with {proc.returncode}")
            r, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not r:
                proc.kill()
                raise AssertionError("vcsim did not print its URL in time")
            line = proc.stdout.readline()
            if line.startswith("VCSIM_URL="):
                break
        hostport = line.split("//", 1)[1].split("/", 1)[0]
        host, port = hostport.rsplit(":", 1)
        sim = Sim(proc, host.strip("[]"), int(port), user, password)
        sims.append(sim)
        return sim

    yield start
    for s in sims:
        s.stop()


@pytest.fixture
def server_pki(tmp_path: Path) -> dict[str, Path]:
    """A private CA and a server certificate for 127.0.0.1 signed by it (the "--ca FILE" case)."""
    from engine import pki
    d = tmp_path / "vc-pki"
    d.mkdir()
    ca = pki.CA.create("test vCenter CA")
    ca.save(d / "ca.pem", d / "ca.key")
    key = pki.new_key()
    cert = ca.issue(key.public_key(), "vcenter.test", server=True, hosts=["127.0.0.1", "localhost"])
    (d / "server.pem").write_bytes(pki.cert_pem(cert))
    (d / "server.key").write_bytes(pki.key_pem(key))
    return {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key"}


__all__ = ["Sim", "vcsim_binary", "vcsim", "server_pki"]
