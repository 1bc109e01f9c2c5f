"""The vault interface: where replicated data rests and recovery points are read from.

Callers (the process server's applier, retention, recovery) use only this interface, so a backend can be swapped
without changing them. The local vault (``local.py``) keeps a replica per disk at the *oldest retained* point plus a
redo journal of sealed records; Azure Blob (next) keeps a page-blob replica at the *newest* point, page-blob
snapshots as points and block blobs as cache logs. Both fit: records go in by ``append``, points by ``add_point``,
reads come out of ``open_view``, history is dropped by ``prune``, and ``verify`` re-reads everything stored.
Backends are picked by kind from ``registry.VAULT_KINDS``.
"""

from __future__ import annotations

import abc
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..records import Record
from ..errors import NotFound, StorageError

PointKind = Literal["crash-consistent", "app-consistent"]


@dataclass(slots=True)
class DiskInfo:
    index: int
    name: str
    size: int


@dataclass(slots=True)
class Point:
    """A recovery point: the machine's disks as they were right after record ``seq`` was captured."""

    id: str
    seq: int
    time: float                 # capture time of record ``seq`` (epoch seconds)
    kind: PointKind
    tag: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(slots=True)
class SealedRecord:
    """A record header (``data`` empty) and its payload sealed by :class:`engine.codec.Sealer` (empty when none).

    The envelope's associated data is ``header.pack_header()``.
    """

    header: Record
    envelope: bytes | bytearray = b""
    extra: dict = field(default_factory=dict)


class DiskView(abc.ABC):
    """Read-only view of one disk as at a point."""

    size: int

    @abc.abstractmethod
    async def read(self, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset+length)``; raises ValueError when out of range, IntegrityError on corrupt data."""

    @abc.abstractmethod
    async def close(self) -> None: ...


@dataclass(slots=True)
class VerifyReport:
    """Outcome of :meth:`MachineVault.verify`: what was checked, and every problem found (``disk``, ``offset``,
    ``length`` where known, and ``error``)."""

    records_checked: int = 0
    blocks_checked: int = 0
    problems: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class MachineVault(abc.ABC):
    """One protected machine's data in a vault."""

    #: Payload bytes the applier should hand to one ``append`` (None: the applier's own size). A vault whose
    #: appends cost round trips (a cloud vault) asks for more per append.
    batch_bytes: int | None = None

    #: True when :meth:`publish_disk` places committed disks in the vault's cloud (a failover's commit calls it).
    publishes_disks: bool = False

    async def publish_disk(self, name: str, image: Path, metadata: dict[str, str]) -> dict[str, Any]:
        """Place a committed disk (the raw image file ``image``) where the vault's cloud can make a disk of it
        (Azure: a VHD-ready page blob). Only for vaults with :attr:`publishes_disks`."""
        raise NotImplementedError(f"{type(self).__name__} does not publish disks")

    #: True while the vault takes WRITE and SYNC records unsealed: a ``SealedRecord`` with no envelope and the
    #: plaintext in ``extra["data"]`` (the vault seals what it keeps sealed itself). Read before each batch.
    #: ``extra["verified"]`` true: the caller has already checked the plaintext against ``header.hash`` (the
    #: applier's records all are); the vault then does not hash it again. Without it the vault checks it.
    @property
    def takes_plain(self) -> bool:
        return False

    #: True while the vault takes a second ``append`` before the first has returned (at most two in flight): its
    #: writes start at once, but it commits only after the first, and fails when the first fails. The applier then
    #: keeps the connection to a cloud vault busy between appends. Read before each batch.
    @property
    def overlaps_appends(self) -> bool:
        return False

    @abc.abstractmethod
    async def ensure_disks(self, disks: list[DiskInfo]) -> None:
        """Create replicas for new disks, grow replicas of disks that grew. Durable on return."""

    @abc.abstractmethod
    def disks(self) -> list[DiskInfo]: ...

    @property
    @abc.abstractmethod
    def last_seq(self) -> int:
        """Highest seq durably in the vault (0 when none)."""

    @property
    @abc.abstractmethod
    def base_seq(self) -> int:
        """Oldest seq a view can be opened at (history before it has been folded away)."""

    @abc.abstractmethod
    async def append(self, records: list[SealedRecord]) -> None:
        """Append records in seq order; durable on return. Records with seq <= last_seq are skipped (idempotent).
        Called again before it returns only while :attr:`overlaps_appends`."""

    @abc.abstractmethod
    async def add_point(self, point: Point) -> None:
        """Record a recovery point; durable on return. ``point.seq`` must be <= last_seq."""

    @abc.abstractmethod
    def points(self) -> list[Point]:
        """Points still within history, oldest first."""

    @abc.abstractmethod
    async def open_view(self, seq: int, disk: int) -> DiskView:
        """The disk as it was right after record ``seq``. base_seq <= seq <= last_seq, else UnknownPoint."""

    async def seq_at_time(self, t: float) -> tuple[int, float] | None:
        """(seq, capture time) of the newest record captured at or before ``t`` (epoch seconds), within history.

        Backends that keep per-record times answer to the record (any point in time); this default answers to
        the newest point at or before ``t``.
        """
        before = [p for p in self.points() if p.time <= t]
        return (before[-1].seq, before[-1].time) if before else None

    @abc.abstractmethod
    async def prune(self, keep_from_seq: int) -> None:
        """Drop history before ``keep_from_seq`` (fold it into the replica); drop points older than it."""

    def history_bytes(self, keep_from_seq: int | None = None) -> int:
        """Bytes the stored history takes now, or would take after ``prune(keep_from_seq)`` (the vault's capacity
        policy: docs/ARCHITECTURE.md §6.1). 0 where the backend cannot tell (nothing is then folded for size)."""
        return 0

    def fold_space(self) -> int:
        """Free bytes a prune may need on the vault's filesystem while it runs (0: none, or not local)."""
        return 0

    @abc.abstractmethod
    async def verify(self) -> VerifyReport:
        """Re-read everything the backend holds for the machine and check it (authentication tags, the source's
        record hashes). Corruption is reported in the result, not raised."""

    @abc.abstractmethod
    async def close(self) -> None: ...


class Vault(abc.ABC):
    """A vault backend holding many machines."""

    kind: str

    @classmethod
    @abc.abstractmethod
    def from_config(cls, cfg: dict[str, Any], key: bytes, *, executor: Executor | None = None) -> Vault:
        """The backend for the ``vault`` section of the appliance's config (``{"kind": ..., ...}``), with the
        32-byte vault key; blocking work runs in ``executor``."""

    def storage_path(self) -> Path | None:
        """A local folder on the filesystem that holds the vault (its free space is watched: the capacity policy),
        or None when the backend is not on a local filesystem."""
        return None

    @abc.abstractmethod
    async def open_machine(self, machine: str) -> MachineVault: ...

    @abc.abstractmethod
    async def remove_machine(self, machine: str) -> None: ...

    # The appliance's own configuration backups (engine/backup/archive.py) are kept in the vault too, so an
    # off-site vault holds what it takes to rebuild the appliance. They are sealed by the backup itself; a backend
    # stores them as opaque files beside the machines, under names ``backup_name_ok`` accepts.
    async def put_config_backup(self, name: str, data: bytes) -> None:
        raise StorageError(f"a {self.kind} vault cannot hold configuration backups in this version",
                           advice="Keep the backups of the appliance home (`lifeboat appliance backup --out FILE`).")

    async def config_backups(self) -> list[str]:
        """Names of the configuration backups held, oldest first."""
        return []

    async def get_config_backup(self, name: str) -> bytes:
        raise NotFound(f"the vault holds no configuration backup {name!r}")

    async def remove_config_backup(self, name: str) -> None:
        pass

    @abc.abstractmethod
    async def close(self) -> None: ...
