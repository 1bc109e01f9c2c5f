"""One rule for every name an operator or a protected machine gives Lifeboat, and one check for every path built
from a name.

Names of machines, disks, policies, recovery plans, recovery hosts and bookmark tags end up in file names (the vault
and cache folders of a machine, ``NAME.img`` exports), NBD export names, URLs and database keys. A compromised
protected machine chooses its disk names and bookmark tags, so the rule is applied where a name enters the
appliance (the control API, the data port's HELLO, the CLI), and :func:`inside` checks each path built from a name
again before it is used (defence in depth).

The rule (docs/SECURITY.md): 1 to 64 characters from ``A-Z a-z 0-9 . _ -``, starting with a letter or a digit, not
ending with ``.`` (Windows drops trailing dots), and not a Windows device name (``CON``, ``NUL``, ``COM1`` ...,
with or without an extension). So no path separators, no ``.``/``..``, no spaces or control characters. Where names
become file names, two names that differ only in case are the same name (Windows and macOS file systems fold case).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable

from .errors import InvalidName

MAX_LENGTH = 64
RULE = "1-64 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit, not ending with '.'"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DEVICES = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}


def check_name(value: object, what: str = "name") -> str:
    """Return ``value`` if it is a valid name, else raise :class:`InvalidName` naming ``what`` (e.g. "disk name")."""
    if not isinstance(value, str):
        raise InvalidName(f"{what} must be a string, got {type(value).__name__}", field=what)
    shown = value if len(value) <= 80 else value[:80] + "…"
    if not _NAME.fullmatch(value) or value.endswith("."):
        raise InvalidName(f"{what} {shown!r} is not allowed", field=what)
    if value.split(".")[0].lower() in _DEVICES:
        raise InvalidName(f"{what} {shown!r} is a reserved device name on Windows", field=what)
    return value


def valid_name(value: object) -> bool:
    try:
        check_name(value)
    except InvalidName:
        return False
    return True


def check_unique(names: Iterable[str], what: str = "name") -> None:
    """Refuse two names that differ only in case (they would be one file on a case-folding file system)."""
    seen: dict[str, str] = {}
    for n in names:
        other = seen.get(n.casefold())
        if other is not None:
            how = "twice" if other == n else f"twice (as {other!r}; names that differ only in case are one name)"
            raise InvalidName(f"{what} {n!r} is given {how}", advice="Give each one a distinct name.", field=what)
        seen[n.casefold()] = n


def inside(folder: Path, *parts: str) -> Path:
    """``folder / parts...``, refused unless the result stays inside ``folder`` (no ``..``, no absolute part, no
    symbolic link of the final component pointing out). The folder itself need not exist yet."""
    base = Path(os.path.abspath(folder))
    path = Path(os.path.abspath(base.joinpath(*parts)))
    if path == base or base not in path.parents:
        raise InvalidName(f"{'/'.join(parts)!r} would leave the folder {base}", field="name")
    if path.is_symlink():
        real = Path(os.path.realpath(path))
        if Path(os.path.realpath(base)) not in real.parents:
            raise InvalidName(f"{path} is a symbolic link that leaves the folder {base}", field="name")
    return path
