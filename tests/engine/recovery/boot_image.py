"""A small bootable disk for the recovery tests, made from Debian packages without root mounts (FACTS.md,
"Recovery host"): an MBR (syslinux's mbr.bin) with one bootable FAT16 partition holding syslinux, Debian's kernel and
a busybox initramfs. The initramfs's init loads the virtio and isofs modules, prints the marker kept in the disk's
marker sector (raw, outside the partition: written by a real NBD client, read back by the guest from its own disk),
then every file of the config drive (the read-only virtio disk labelled ``cidata``), then ``LIFEBOAT-BOOTED``, and
idles. Built once per machine into ``.cache/bootimg/`` and copied per test.

The guest-agent variant (``build(cache, guest_agent=True)``, ``boot-ga.img``) also carries Debian's ``qemu-ga`` with
the shared libraries it links (read off ``ldd``) and the ``virtio_console`` module, and its init starts the agent on
the ``org.qemu.guest_agent.0`` port before anything else: a real guest agent for the boot detection that asks it.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import struct
import subprocess
from pathlib import Path

SECTOR = 512
PART_START = 2048                  # sectors: the partition starts at 1 MiB
PART_SECTORS = 60 * 2048           # 60 MiB FAT16
MARKER_OFFSET = 62 * 1024 * 1024   # the marker sector, after the partition
DISK_SIZE = 64 * 1024 * 1024
BOOTED = "LIFEBOAT-BOOTED"
MODULES = ("virtio_pci", "virtio_blk", "isofs")
GA_MODULES = ("virtio_console",)
QEMU_GA = Path("/usr/sbin/qemu-ga")
#: Bumped when the image's content changes, so a cached older build is replaced.
IMAGE_VERSION = "2"

INIT = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /mnt /bin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do insmod /lib/modules/$m 2>/dev/null; done
if [ -x /usr/sbin/qemu-ga ]; then
  # the guest agent's port, found by its name (no udev here to make /dev/virtio-ports/...)
  ga=; i=0
  while [ -z "$ga" ] && [ $i -lt 50 ]; do
    for p in /sys/class/virtio-ports/*; do [ "$(cat $p/name 2>/dev/null)" = org.qemu.guest_agent.0 ] && ga=/dev/${p##*/}; done
    [ -z "$ga" ] && sleep 0.1; i=$((i+1))
  done
  mkdir -p /tmp /run /var/run
  if [ -n "$ga" ]; then /usr/sbin/qemu-ga -m virtio-serial -p $ga -t /tmp -f /tmp/qemu-ga.pid & echo "LIFEBOAT-GA: $ga"; else echo "LIFEBOAT-GA: no port"; fi
fi
i=0; while [ ! -b /dev/vda ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
echo "LIFEBOAT-MARKER: $(dd if=/dev/vda bs=512 skip=__MARKER_SECTOR__ count=1 2>/dev/null | tr -d '\000\n')"
if [ -b /dev/vdb ] && mount -t iso9660 -o ro /dev/vdb /mnt 2>/dev/null; then
  for f in /mnt/*; do echo "LIFEBOAT-CIDATA: $(basename $f)"; sed 's/^/LIFEBOAT-CIDATA|  /' $f; done
  umount /mnt
  echo "__BOOTED__"
else
  echo "LIFEBOAT-CIDATA: none"
  echo "__BOOTED__"
  # no config drive: this is the protected machine itself; it writes its markers through its own disk
  # (fsync: the flush reaches whatever serves the disk: the agent's NBD export)
  for n in 1 2; do
    [ $n = 2 ] && sleep __GAP__
    printf "source-marker-$n" | dd of=/dev/vda bs=512 seek=__MARKER_SECTOR__ conv=sync,notrunc,fsync 2>/dev/null
    echo "LIFEBOAT-SOURCE-WROTE: source-marker-$n"
  done
fi
while true; do sleep 3600; done
"""
#: Seconds between the source's two marker writes: the test takes its bookmark in between.
SOURCE_GAP = 8


def _cpio(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A cpio "newc" archive: (name, mode, data); directories have S_IFDIR modes and no data."""
    out = io.BytesIO()
    for ino, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], start=1):
        nb = name.encode() + b"\0"
        hdr = "070701" + "".join(f"{v:08x}" for v in (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nb), 0))
        out.write(hdr.encode() + nb)
        out.write(b"\0" * (-(110 + len(nb)) % 4))
        out.write(data)
        out.write(b"\0" * (-len(data) % 4))
    return out.getvalue()


def missing_ga_tools() -> list[str]:
    """What the guest-agent variant needs beyond missing_tools()."""
    return [] if QEMU_GA.exists() and shutil.which("ldd") else ["qemu-guest-agent"]


def _shared_libraries(binary: Path) -> list[Path]:
    """The files ``binary`` loads: each ``=> /path`` of ldd's output, and the loader itself."""
    out = subprocess.run(["ldd", str(binary)], check=True, capture_output=True, text=True).stdout
    libs = []
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts and len(parts) > parts.index("=>") + 1 and parts[parts.index("=>") + 1].startswith("/"):
            libs.append(Path(parts[parts.index("=>") + 1]))
        elif parts and parts[0].startswith("/"):
            libs.append(Path(parts[0]))          # the loader: /lib64/ld-linux-x86-64.so.2
    return libs


def _tree(path: Path) -> list[tuple[str, int, bytes]]:
    """Directory entries for every parent of ``path`` (relative, no leading slash)."""
    rel = Path(*path.parts[1:])
    return [(str(p), 0o40755, b"") for p in reversed(rel.parents) if str(p) != "."]


def missing_tools() -> list[str]:
    need = {"mkfs.fat": "dosfstools", "syslinux": "syslinux", "mcopy": "mtools", "modprobe": "kmod"}
    miss = [pkg for tool, pkg in need.items() if shutil.which(tool) is None]
    if not Path("/usr/lib/syslinux/mbr/mbr.bin").exists():
        miss.append("syslinux-common")
    if not Path("/bin/busybox").exists():
        miss.append("busybox-static")
    if not list(Path("/boot").glob("vmlinuz-*")):
        miss.append("linux-image-amd64")
    return miss


def _initramfs(kver: str, guest_agent: bool = False) -> bytes:
    mods: list[str] = []
    for m in MODULES + (GA_MODULES if guest_agent else ()):
        out = subprocess.run(["modprobe", "-S", kver, "--show-depends", m], check=True, capture_output=True,
                             text=True).stdout
        for line in out.splitlines():
            if line.startswith("insmod ") and line.split()[1] not in mods:
                mods.append(line.split()[1])
    init = (INIT.replace("__MARKER_SECTOR__", str(MARKER_OFFSET // SECTOR)).replace("__BOOTED__", BOOTED)
            .replace("__GAP__", str(SOURCE_GAP)))
    entries: list[tuple[str, int, bytes]] = [("bin", 0o40755, b""), ("lib", 0o40755, b""),
                                             ("lib/modules", 0o40755, b""),
                                             ("bin/busybox", 0o100755, Path("/bin/busybox").read_bytes()),
                                             ("init", 0o100755, init.encode())]
    if guest_agent:
        seen = {e[0] for e in entries}
        for f in [QEMU_GA, *_shared_libraries(QEMU_GA)]:
            for d in _tree(f):
                if d[0] not in seen:
                    entries.append(d)
                    seen.add(d[0])
            # the loader's path is often a link: the archive holds the file's bytes under the name ldd printed
            entries.append((str(Path(*f.parts[1:])), 0o100755, f.resolve().read_bytes()))
    order = []
    for path in mods:
        data = Path(path).read_bytes()
        if path.endswith(".xz"):
            import lzma
            data, path = lzma.decompress(data), path[:-3]
        base = os.path.basename(path)
        entries.append((f"lib/modules/{base}", 0o100644, data))
        order.append(base)
    entries.append(("modules.order", 0o100644, ("\n".join(order) + "\n").encode()))
    return gzip.compress(_cpio(entries), 6)


def build(cache: Path, *, guest_agent: bool = False) -> Path:
    """The cached boot image (built once): a raw disk of DISK_SIZE bytes; with a running qemu-ga if asked."""
    image = cache / ("boot-ga.img" if guest_agent else "boot.img")
    version = cache / ("version-ga" if guest_agent else "version")
    if image.exists() and version.exists() and version.read_text() == IMAGE_VERSION:
        return image
    cache.mkdir(parents=True, exist_ok=True)
    kernel = sorted(Path("/boot").glob("vmlinuz-*"))[-1]
    kver = kernel.name[len("vmlinuz-"):]
    work = cache / f"build.{os.getpid()}{'-ga' if guest_agent else ''}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    (work / "initrd.gz").write_bytes(_initramfs(kver, guest_agent))
    shutil.copyfile(kernel, work / "vmlinuz")
    (work / "syslinux.cfg").write_text("DEFAULT linux\nPROMPT 0\nTIMEOUT 0\nLABEL linux\n  KERNEL vmlinuz\n"
                                       "  APPEND initrd=initrd.gz console=ttyS0 quiet loglevel=3 panic=-1\n")
    fat = work / "fat.img"
    with open(fat, "wb") as f:
        f.truncate(PART_SECTORS * SECTOR)
    subprocess.run(["mkfs.fat", "-F", "16", "-n", "LBBOOT", str(fat)], check=True, capture_output=True)
    subprocess.run(["syslinux", "--install", str(fat)], check=True, capture_output=True)
    subprocess.run(["mcopy", "-i", str(fat), str(work / "vmlinuz"), str(work / "initrd.gz"),
                    str(work / "syslinux.cfg"), "::/"], check=True, capture_output=True)
    mbr = bytearray(SECTOR)
    mbr[:440] = Path("/usr/lib/syslinux/mbr/mbr.bin").read_bytes()[:440]
    # one bootable FAT16 (LBA, type 0x0e) partition; CHS fields saturated, LBA is what counts
    mbr[446:462] = struct.pack("<B3sB3sII", 0x80, b"\xfe\xff\xff", 0x0E, b"\xfe\xff\xff", PART_START, PART_SECTORS)
    mbr[510:512] = b"\x55\xaa"
    tmp = work / "boot.img"
    with open(tmp, "wb") as out:
        out.truncate(DISK_SIZE)
        out.write(mbr)
        out.seek(PART_START * SECTOR)
        with open(fat, "rb") as src:
            shutil.copyfileobj(src, out)
    os.replace(tmp, image)
    version.write_text(IMAGE_VERSION)
    shutil.rmtree(work, ignore_errors=True)
    return image


def write_marker_file(path: Path, text: str) -> None:
    """Write the marker sector straight into an image file (the protected machine's disk before it is served)."""
    data = text.encode().ljust(SECTOR, b"\0")
    with open(path, "r+b") as f:
        f.seek(MARKER_OFFSET)
        f.write(data)
