"""Where each role keeps its files. Paths are fixed relative to a home folder (``--home``)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import NotInitialised
from .fileio import atomic_write


@dataclass
class ApplianceHome:
    root: Path

    @property
    def config(self) -> Path: return self.root / "appliance.json"
    @property
    def db(self) -> Path: return self.root / "state.db"
    @property
    def pki(self) -> Path: return self.root / "pki"
    @property
    def ca_cert(self) -> Path: return self.pki / "ca.crt"
    @property
    def ca_key(self) -> Path: return self.pki / "ca.key"
    @property
    def server_cert(self) -> Path: return self.pki / "server.crt"
    @property
    def server_key(self) -> Path: return self.pki / "server.key"
    @property
    def admin_cert(self) -> Path: return self.pki / "admin.crt"
    @property
    def admin_key(self) -> Path: return self.pki / "admin.key"
    @property
    def passphrase(self) -> Path: return self.root / "passphrase.txt"
    @property
    def cache(self) -> Path: return self.root / "cache"
    @property
    def drills(self) -> Path: return self.root / "drills"
    @property
    def failovers(self) -> Path: return self.root / "failovers"
    @property
    def reports(self) -> Path: return self.root / "reports"
    @property
    def log(self) -> Path: return self.root / "appliance.log"
    @property
    def pidfile(self) -> Path: return self.root / "appliance.pid"

    def make_private(self) -> None:
        """Every folder of the home is 0700 (created so, and tightened if an older version left it wider)."""
        for d in (self.root, self.pki, self.cache, self.drills):
            d.mkdir(mode=0o700, exist_ok=True)
            for sub in [d, *(p for p in d.iterdir() if p.is_dir() and not p.is_symlink())]:
                if sub.stat().st_mode & 0o077:
                    os.chmod(sub, 0o700)

    def load_config(self) -> dict:
        if not self.config.exists():
            raise NotInitialised(f"{self.root} is not an appliance home",
                                 advice=f"Run `lifeboat appliance init --home {self.root}` first.")
        return json.loads(self.config.read_text())

    def save_config(self, cfg: dict) -> None:
        atomic_write(self.config, json.dumps(cfg, indent=2).encode(), 0o600)


@dataclass
class AgentHome:
    root: Path

    @property
    def config(self) -> Path: return self.root / "agent.json"
    @property
    def ca_cert(self) -> Path: return self.root / "ca.crt"
    @property
    def cert(self) -> Path: return self.root / "agent.crt"
    @property
    def key(self) -> Path: return self.root / "agent.key"
    @property
    def journal(self) -> Path: return self.root / "journal"
    @property
    def socket(self) -> Path: return self.root / "agent.sock"
    @property
    def log(self) -> Path: return self.root / "agent.log"

    def load_config(self) -> dict:
        if not self.config.exists():
            raise NotInitialised(f"{self.root} is not a registered agent home",
                                 advice="Run `lifeboat agent register --home DIR --appliance HOST:PORT "
                                        "--passphrase-file FILE --name MACHINE` first.")
        return json.loads(self.config.read_text())

    def save_config(self, cfg: dict) -> None:
        atomic_write(self.config, json.dumps(cfg, indent=2).encode(), 0o600)
