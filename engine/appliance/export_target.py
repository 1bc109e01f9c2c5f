"""Where a drill writes its raw disk images: safe in any folder, even a shared one such as /tmp.

The appliance runs as root and the disk names come from the protected machine, so an export:

- writes only into a folder Lifeboat created for it (0700; missing parents are created 0700 too) or an existing,
  empty folder the operator named that is not a symbolic link;
- creates each image exclusively (``O_CREAT | O_EXCL | O_NOFOLLOW``), 0600, relative to a descriptor of that folder
  opened once, so neither an existing file nor a symbolic link planted later is ever written through;
- remembers the identity (device, inode) of every file and folder it made, and cleanup removes exactly those:
  never a file by its name alone, never a folder that is not empty.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from .. import platform
from ..errors import ExportRefused
from ..names import check_name


@dataclass
class ExportTarget:
    folder: Path
    fd: int | None
    made_dirs: list[tuple[Path, int, int]] = field(default_factory=list)     # (path, st_dev, st_ino), outermost first
    #: file name → (st_dev, st_ino, st_ctime_ns) taken when the file was last written: an inode number alone can be
    #: reused by a file someone creates after deleting ours; its change time cannot be set back.
    made_files: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    @classmethod
    def prepare(cls, folder: Path) -> ExportTarget:
        """Check (or create) the folder before the drill starts, so a refusal reaches the operator at once."""
        if not folder.is_absolute():
            raise ExportRefused("the export folder must be an absolute path", field="export_dir")
        folder = Path(os.path.normpath(folder))
        made: list[tuple[Path, int, int]] = []
        missing: list[Path] = []
        p = folder
        while not os.path.lexists(p):
            missing.append(p)
            p = p.parent
        try:
            for d in reversed(missing):
                os.mkdir(d, 0o700)
                os.chmod(d, 0o700)  # the umask may have taken bits; never more than 0700
                st = os.lstat(d)
                made.append((d, st.st_dev, st.st_ino))
        except OSError as exc:
            _remove_dirs(made)
            raise ExportRefused(f"cannot create the export folder {folder}: {exc.strerror}", field="export_dir") \
                from None
        st = os.lstat(folder)
        if stat.S_ISLNK(st.st_mode):
            raise ExportRefused(f"the export folder {folder} is a symbolic link", field="export_dir")
        if not stat.S_ISDIR(st.st_mode):
            raise ExportRefused(f"{folder} exists and is not a folder", field="export_dir")
        if not made and any(os.scandir(folder)):
            raise ExportRefused(f"the export folder {folder} is not empty", field="export_dir")
        fd = platform.open_folder(folder)
        if fd is not None:
            fst = os.fstat(fd)
            if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):   # swapped between the check and the open
                os.close(fd)
                _remove_dirs(made)
                raise ExportRefused(f"the export folder {folder} changed while it was being opened",
                                    field="export_dir")
        return cls(folder, fd, made)

    def create(self, disk_name: str) -> tuple[int, str]:
        """Create ``DISK.img`` exclusively, 0600; returns (descriptor, path)."""
        fname = f"{check_name(disk_name, 'disk name')}.img"
        path = str(self.folder / fname)
        try:
            fd = platform.create_in(self.fd, self.folder, fname, 0o600)
        except FileExistsError:
            raise ExportRefused(f"{path} already exists (or is a link): Lifeboat never overwrites a file",
                                field="export_dir") from None
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o600)
        self._remember(fname, fd)
        return fd, path

    def _remember(self, fname: str, fd: int) -> None:
        st = os.fstat(fd)
        self.made_files[fname] = (st.st_dev, st.st_ino, st.st_ctime_ns)

    def finish(self, fd: int, path: str) -> None:
        """The image is written: note its identity as it is now, then close it."""
        try:
            self._remember(os.path.basename(path), fd)
        finally:
            os.close(fd)

    def cleanup(self) -> list[str]:
        """Remove what this export made, and nothing else. Returns the paths removed."""
        removed = []
        for fname, ident in self.made_files.items():
            try:
                st = platform.lstat_in(self.fd, self.folder, fname)
                if (st.st_dev, st.st_ino, st.st_ctime_ns) != ident:
                    continue   # replaced by something else since: not ours to delete
                platform.unlink_in(self.fd, self.folder, fname)
                removed.append(str(self.folder / fname))
            except FileNotFoundError:
                pass
        self.made_files.clear()
        self.close()
        _remove_dirs(self.made_dirs)
        self.made_dirs.clear()
        return removed

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _remove_dirs(made: list[tuple[Path, int, int]]) -> None:
    """Remove the folders an export created, innermost first, only while each is still ours and empty."""
    for d, dev, ino in reversed(made):
        try:
            st = os.lstat(d)
            if (st.st_dev, st.st_ino) != (dev, ino):
                return
            os.rmdir(d)
        except OSError:
            return
