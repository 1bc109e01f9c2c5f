"""Shared plumbing of the benchmarks: a real appliance and agent as separate processes, per-role memory/CPU,
status polling, NBD helper servers, tables. Not a benchmark itself.

Roles are started through the CLI (``lifeboat appliance run`` / ``lifeboat agent run``), each in its own process,
so peak RSS (``VmHWM`` in /proc/PID/status) and CPU time (/proc/PID/stat) can be read per role. Status is polled
through the control API with the admin client (the same call as ``lifeboat status --json``, without paying a
Python start-up for every sample).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV_PY = REPO / ".venv" / "bin" / "python"
LIFEBOAT = [str(VENV_PY), "-m", "engine.cli"]
MiB = 1 << 20
GiB = 1 << 30


def ensure_venv() -> None:
    """Re-run the script under the project's venv (it needs zstandard, cryptography, keyring, psutil)."""
    if Path(sys.prefix).resolve() != (REPO / ".venv").resolve() and VENV_PY.exists():
        os.execv(str(VENV_PY), [str(VENV_PY), *sys.argv])
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


def bench_tmp(prefix: str, where: str | None = None) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=f"lifeboat-{prefix}-", dir=where))
    # headless keyring, per run (set before anything imports keyring; children inherit it)
    os.environ["PYTHON_KEYRING_BACKEND"] = "keyrings.alt.file.PlaintextKeyring"
    os.environ["XDG_DATA_HOME"] = str(tmp / "xdg")
    (tmp / "xdg").mkdir()
    return tmp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout}s")


class Proc:
    """A child process with per-process memory and CPU readings from /proc."""

    def __init__(self, name: str, cmd: list[str], log: Path, **kw) -> None:
        self.name, self.log = name, log
        self._logf = open(log, "wb")
        self.p = subprocess.Popen(cmd, stdout=self._logf, stderr=subprocess.STDOUT, **kw)
        self.pid = self.p.pid
        self.last_hwm = 0

    def _status(self, key: str) -> int:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def peak_rss(self) -> int:
        """VmHWM (bytes); remembered so it can be read after the process is gone."""
        self.last_hwm = max(self.last_hwm, self._status("VmHWM"))
        return self.last_hwm

    def rss(self) -> int:
        return self._status("VmRSS")

    def cpu(self) -> float:
        """User + system CPU seconds of the process (all threads)."""
        return pid_cpu(self.pid)

    def alive(self) -> bool:
        return self.p.poll() is None

    def stop(self, timeout: float = 30.0) -> int:
        self.peak_rss()
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                print(f"!! {self.name} (pid {self.pid}) did not stop within {timeout}s after SIGTERM: killing it")
                self.p.kill()
                self.p.wait()
        self._logf.close()
        return self.p.returncode

    def problems(self) -> str:
        """Tracebacks / errors / warnings from the role's log."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        keep = [ln for ln in text.splitlines() if any(w in ln for w in
                ("Traceback", "Error", "ERROR", "WARNING", "CRITICAL", "  File ", "Exception"))]
        return text if any("Traceback" in ln for ln in keep) else "\n".join(keep)


class Site:
    """Appliance + agent (one machine, one disk) as two processes in ``tmp``."""

    def __init__(self, tmp: Path, disk: Path, *, crash_interval: str = "5s", appliance_home: Path | None = None,
                 vault_setup=None) -> None:  # type: ignore[no-untyped-def]
        self.tmp, self.disk = tmp, disk
        self.vault_setup = vault_setup   # called with the Site after `appliance init`, before `appliance run`
        self.ahome, self.agent_home = appliance_home or tmp / "appliance", tmp / "agent"
        self.cport, self.dport, self.nport = free_port(), free_port(), free_port()
        self.app: Proc | None = None
        self.agent: Proc | None = None
        self.crash_interval = crash_interval
        self._client = None

    def cli(self, *args: str) -> str:
        r = subprocess.run([*LIFEBOAT, *args], capture_output=True, text=True, cwd=REPO, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"lifeboat {' '.join(args)} failed ({r.returncode}):\n{r.stderr}{r.stdout}")
        return r.stdout

    def start(self) -> Site:
        self.cli("appliance", "init", "--home", str(self.ahome), "--control-port", str(self.cport),
                 "--data-port", str(self.dport), "--listen", "127.0.0.1")
        if self.vault_setup is not None:
            self.vault_setup(self)
        self.app = Proc("appliance", [*LIFEBOAT, "appliance", "run", "--home", str(self.ahome)],
                        self.tmp / "appliance.log", cwd=REPO)
        wait_port(self.cport, proc=self.app.p)
        wait_port(self.dport, proc=self.app.p)
        self.cli("agent", "register", "--home", str(self.agent_home), "--appliance", f"127.0.0.1:{self.cport}",
                 "--passphrase-file", str(self.ahome / "passphrase.txt"), "--name", "vm1")
        self.cli("policy", "set", "--home", str(self.ahome), "default", "--crash-interval", self.crash_interval)
        self.agent = Proc("agent", [*LIFEBOAT, "agent", "run", "--home", str(self.agent_home),
                                    "--disk", f"d={self.disk}", "--nbd", f"127.0.0.1:{self.nport}"],
                          self.tmp / "agent.log", cwd=REPO)
        wait_port(self.nport, proc=self.agent.p)
        from engine.client import AdminClient
        self._client = AdminClient(self.ahome)
        deadline = time.monotonic() + 30
        while not self.status().get("registered") and not self.status().get("machines"):
            if time.monotonic() > deadline:
                raise TimeoutError("vm1 never showed up in status")
            time.sleep(0.1)
        return self

    def extra_agent(self, name: str, disk: Path) -> tuple[Proc, str]:
        """Another registered (never protected) machine: its agent serves the export with capture off."""
        home, port = self.tmp / f"agent-{name}", free_port()
        self.cli("agent", "register", "--home", str(home), "--appliance", f"127.0.0.1:{self.cport}",
                 "--passphrase-file", str(self.ahome / "passphrase.txt"), "--name", name)
        p = Proc(f"agent-{name}", [*LIFEBOAT, "agent", "run", "--home", str(home), "--disk", f"d={disk}",
                                   "--nbd", f"127.0.0.1:{port}"], self.tmp / f"agent-{name}.log", cwd=REPO)
        wait_port(port, proc=p.p)
        return p, f"nbd://127.0.0.1:{port}/d"

    @property
    def nbd_url(self) -> str:
        return f"nbd://127.0.0.1:{self.nport}/d"

    def roles(self) -> list[Proc]:
        return [p for p in (self.app, self.agent) if p is not None]

    def status(self) -> dict:
        return self._client.call("GET", "/v1/status")

    def machine(self, name: str = "vm1") -> dict:
        return next((m for m in self.status()["machines"] if m["name"] == name), {})

    def agent_status(self) -> dict:
        """The agent's own view (connected, acked_seq, seq, error) through its control socket."""
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(10)
                s.connect(str(self.agent_home / "agent.sock"))
                s.sendall(b'{"op": "status"}\n')
                buf = b""
                while not buf.endswith(b"\n"):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
            return json.loads(buf or b"{}")
        except (OSError, ValueError) as e:
            return {"error": f"agent status unavailable: {e}"}

    def protect(self) -> None:
        self._client.call("POST", "/v1/machines/vm1/protect", {"policy": None})

    def check_alive(self) -> None:
        for p in self.roles():
            if not p.alive():
                raise RuntimeError(f"{p.name} exited with {p.p.returncode}:\n{p.problems()}")

    def wait_state(self, state: str, timeout: float, poll: float = 0.1) -> float:
        """Wait for the machine's state; returns the monotonic time it was first seen."""
        deadline = time.monotonic() + timeout
        while True:
            m = self.machine()
            if m.get("state") == state:
                return time.monotonic()
            if m.get("error"):
                print(f"!! status reports an error: {m['error']}")
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"state {state!r} not reached in {timeout}s (last: {m})")
            time.sleep(poll)

    def wait_caught_up(self, timeout: float = 300.0) -> float:
        """Until RPO is 0 on two polls > 1 s apart (the agent's heartbeat is once a second). Returns seconds waited."""
        t0 = time.monotonic()
        zero_since = None
        while True:
            m = self.machine()
            now = time.monotonic()
            if m.get("rpo_seconds", 1) == 0 and m.get("cache_bytes", 0) < 64 * MiB:
                zero_since = zero_since or now
                if now - zero_since > 1.2:
                    return zero_since - t0
            else:
                zero_since = None
            self.check_alive()
            if now - t0 > timeout:
                print(f"!! not caught up after {timeout}s\n   appliance status: {json.dumps(m)}\n"
                      f"   agent status: {json.dumps(self.agent_status())}", flush=True)
                raise TimeoutError(f"not caught up after {timeout}s (last: rpo {m.get('rpo_seconds')})")
            time.sleep(0.2)

    def stop(self) -> list[str]:
        """Stop agent then appliance; returns problems found (exit codes, tracebacks in logs)."""
        out = []
        for p in (self.agent, self.app):
            if p is None:
                continue
            rc = p.stop()
            probs = p.problems()
            if rc not in (0, None):
                out.append(f"{p.name} exited with {rc}")
            if probs.strip():
                out.append(f"--- {p.name} log ({p.log}):\n{probs[-6000:]}")
        return out


def start_nbdkit(tmp: Path, disk: Path) -> tuple[Proc, str]:
    port = free_port()
    p = Proc("nbdkit", ["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(port), "--exit-with-parent", "file", str(disk)],
             tmp / "nbdkit.log")
    wait_port(port, proc=p.p)
    return p, f"nbd://127.0.0.1:{port}"


def pid_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (all threads); 0.0 once it is gone."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


def self_cpu() -> float:
    """User + system CPU seconds of this process so far (all threads)."""
    t = os.times()
    return t.user + t.system


def warm_memory(gib: float) -> float | None:
    """Touch ``gib`` GiB of fresh anonymous memory, then free it; returns the seconds it took (None: skipped, the
    machine has less than twice that available).

    Why: on a VM whose balloon driver reports free pages to the host (virtio-balloon free page reporting, as on
    this machine), memory the guest freed more than ~2 s ago is given back to the host, and the next first touch
    of it faults in the host: writing 1.8 GB to a new file costs 1.35 s of system time then, 0.42 s right after
    the same memory was touched (``dd bs=1M count=1800``, measured here). An arm that happens to start on cold
    memory pays that in whichever process touches it (Azurite's page cache, mostly), so the arms of one run are
    warmed the same way just before each is timed. Real appliances do not run on such memory; the bench's
    ``--warm-gib 0`` shows the raw numbers."""
    if gib <= 0:
        return None
    import ctypes
    import mmap
    n = int(gib * GiB)
    try:
        avail = next(int(ln.split()[1]) * 1024 for ln in Path("/proc/meminfo").read_text().splitlines()
                     if ln.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return None
    if avail < 2 * n:
        return None
    t = time.monotonic()
    m = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buf = (ctypes.c_char * n).from_buffer(m)
    ctypes.memset(ctypes.addressof(buf), 1, n)
    del buf
    m.close()
    return time.monotonic() - t


def make_sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    k = (len(v) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def table(rows: list[list[object]], head: list[str]) -> str:
    cells = [head] + [[f"{c:,.1f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    w = [max(len(r[i]) for r in cells) for i in range(len(head))]
    line = lambda r: "| " + " | ".join(c.rjust(w[i]) if i else c.ljust(w[i]) for i, c in enumerate(r)) + " |"
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (x + 2) for x in w) + "|", *map(line, cells[1:])])


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        sys.exit(f"missing tools: {', '.join(missing)} (run scripts/setup.sh)")


def finish(site: Site | None, extra: list[Proc] = (), tmp: Path | None = None, keep: bool = False) -> None:
    probs = site.stop() if site else []
    for p in extra:
        p.stop()
    if probs:
        print("\nPROBLEMS SEEN IN THE ROLES:\n" + "\n".join(probs))
    if tmp and not keep:
        shutil.rmtree(tmp, ignore_errors=True)
    elif tmp:
        print(f"(kept {tmp})")

