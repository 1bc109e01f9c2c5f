"""A committed disk as a VHD-ready page blob (engine/vault/azure/vhd.py) on a real Azurite: every footer field and
the checksum parsed back, the data byte-exact against the point it came from, and qemu-img (a real VHD reader)
agreeing on the format and the contents."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest

from engine.vault.azure import vhd
from engine.vault.azure.rest import AzureBlobClient, Credential
from engine.vault.base import DiskInfo
from tests.azurite import KEY as AZ_KEY
from tests.engine.vault.test_azure_vault import azurite, container, history, vault  # noqa: F401 (fixtures)
from tests.engine.vault.test_local_vault import SIZES, Model

MiB = 1024 * 1024


def test_geometry_matches_the_specification_table() -> None:
    # values of the VHD specification's CHS algorithm (and of qemu's calculate_geometry) for common sizes
    assert vhd.geometry(64 * MiB) == (963, 8, 17)
    assert vhd.geometry(8 << 30) == (16644, 16, 63)
    assert vhd.geometry(127 << 30) == (65278, 16, 255)
    assert vhd.geometry(4 << 40) == (65535, 16, 255)        # capped
    assert vhd.vhd_data_size(1) == MiB and vhd.vhd_data_size(MiB) == MiB and vhd.vhd_data_size(MiB + 1) == 2 * MiB
    with pytest.raises(ValueError):
        vhd.footer(MiB + 512)


async def test_committed_disk_is_a_vhd_ready_page_blob(azurite, container, tmp_path: Path) -> None:  # noqa: F811
    rng = random.Random(31)
    model = Model(SIZES)
    v = vault(azurite.url, container)
    mv = await v.open_machine("vm1")
    await mv.ensure_disks([DiskInfo(d, f"d{d}", s) for d, s in SIZES.items()])
    await history(mv, model, rng, 6)
    point = mv.points()[-1]
    assert mv.publishes_disks
    disk = 1                                   # 8 MiB + 12345 bytes: not a whole MiB, not a whole page
    size = SIZES[disk]
    image = tmp_path / "d1.img"
    view = await mv.open_view(point.seq, disk)
    image.write_bytes(await view.read(0, size))
    await view.close()
    want = model.snaps[point.seq][disk]
    assert hashlib.sha256(image.read_bytes()).hexdigest() == want
    before = time.time()
    res = await mv.publish_disk("d1", image, {"lbpoint": point.id, "lbdisk": "d1"})
    vsize = vhd.vhd_data_size(size)
    assert vsize == 9 * MiB and res["vhd_size"] == vsize and res["blob_bytes"] == vsize + 512
    c = AzureBlobClient(azurite.url, container, Credential(key=AZ_KEY))
    props = c.get_properties(res["blob"])
    assert props is not None and props.header("x-ms-blob-type") == "PageBlob"
    assert int(props.header("content-length")) == vsize + 512
    assert props.metadata["lbpoint"] == point.id and props.metadata["lbsize"] == str(size)
    blob = c.get_blob(res["blob"])
    c.close()
    assert len(blob) == vsize + 512
    # the data: the point's bytes, then zeros up to the whole MiB
    assert hashlib.sha256(blob[:size]).hexdigest() == want
    assert not any(blob[size:vsize])
    # the footer, field by field (big-endian)
    raw = blob[vsize:]
    f = vhd.parse_footer(raw)
    assert raw[0:8] == b"conectix" and f.cookie == b"conectix"
    assert f.features == 2 and raw[8:12] == b"\0\0\0\2"
    assert f.format_version == 0x00010000
    assert f.data_offset == 0xFFFFFFFFFFFFFFFF and raw[16:24] == b"\xff" * 8
    assert abs(f.timestamp - (before - 946684800)) < 60          # seconds since 2000-01-01 UTC
    assert f.creator_app == b"win " and f.creator_version == 0x00010000 and f.creator_host_os == 0x5769326B
    assert f.original_size == vsize and f.current_size == vsize
    assert struct.unpack(">Q", raw[48:56])[0] == vsize
    assert (f.cylinders, f.heads, f.sectors_per_track) == vhd.geometry(vsize)
    assert f.cylinders * f.heads * f.sectors_per_track * 512 <= vsize
    assert f.disk_type == 2 and raw[60:64] == b"\0\0\0\2"
    assert f.checksum == (~(sum(raw[:64]) + sum(raw[68:])) & 0xFFFFFFFF)
    assert struct.unpack(">I", raw[64:68])[0] == f.checksum
    assert len(f.unique_id) == 16 and any(f.unique_id) and f.saved_state == 0 and f.reserved_zero
    # a flipped bit no longer checks out
    bad = bytearray(raw)
    bad[40] ^= 1
    assert vhd.checksum(bad) != f.checksum
    # publishing again (a retried commit) rewrites it whole
    res2 = await mv.publish_disk("d1", image, {"lbpoint": point.id})
    assert res2["blob"] == res["blob"]
    await v.close()
    # a real VHD reader: qemu-img takes it as a fixed VHD of the padded size, with the point's bytes
    if not shutil.which("qemu-img"):
        pytest.skip("qemu-img is not installed (Debian qemu-utils): the independent reader check cannot run")
    vfile = tmp_path / "d1.vhd"
    vfile.write_bytes(blob)
    info = json.loads(subprocess.run(["qemu-img", "info", "-f", "vpc", "--output", "json", str(vfile)],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["format"] == "vpc" and info["virtual-size"] == vsize
    out = tmp_path / "back.raw"
    subprocess.run(["qemu-img", "convert", "-f", "vpc", "-O", "raw", str(vfile), str(out)], check=True)
    back = out.read_bytes()
    assert len(back) == vsize and hashlib.sha256(back[:size]).hexdigest() == want and not any(back[size:])


async def test_publish_of_an_unaligned_tiny_disk(azurite, container, tmp_path: Path) -> None:  # noqa: F811
    v = vault(azurite.url, container)
    mv = await v.open_machine("vm2")
    image = tmp_path / "tiny.img"
    data = random.Random(3).randbytes(1000)
    image.write_bytes(data)
    res = await mv.publish_disk("tiny", image, {})
    c = AzureBlobClient(azurite.url, container, Credential(key=AZ_KEY))
    blob = c.get_blob(res["blob"])
    c.close()
    assert len(blob) == MiB + 512 and blob[:1000] == data and not any(blob[1000:MiB])
    f = vhd.parse_footer(blob[MiB:])
    assert f.current_size == MiB and f.checksum == vhd.checksum(blob[MiB:])
    await v.close()
