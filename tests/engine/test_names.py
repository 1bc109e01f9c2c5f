"""The one name rule (engine/names.py) and the path check built on it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.errors import InvalidName
from engine.names import check_name, check_unique, inside, valid_name

GOOD = ["vm1", "web-01.example", "D0", "a", "x" * 64, "sda_1", "9lives", "con1", "nullable", "a..b"]
BAD = ["", ".", "..", "../../escaped", "a/b", "a\\b", "/etc", ".hidden", "-dash", "_under", "x" * 65, "sp ace",
       "tab\t", "nl\n", "nul\x00", "dot.", "CON", "con", "nul.img", "Com1", "LPT9.txt", "aux", "prn", "é",
       "\u202e", 5, None, {"a": 1}, ["a"], b"bytes"]


@pytest.mark.parametrize("name", GOOD)
def test_good_names_pass(name: str) -> None:
    assert check_name(name) == name and valid_name(name)


@pytest.mark.parametrize("name", BAD, ids=repr)
def test_bad_names_refused_with_code(name: object) -> None:
    with pytest.raises(InvalidName) as ei:
        check_name(name, "disk name")
    assert ei.value.code == "LB_INVALID_NAME" and "disk name" in ei.value.message
    assert ei.value.details["field"] == "disk name" and ei.value.advice
    assert not valid_name(name)


def test_unique_ignores_case() -> None:
    check_unique(["d0", "d1"])
    for names in (["d0", "D0"], ["d0", "d0"]):
        with pytest.raises(InvalidName):
            check_unique(names, "disk name")


def test_inside_refuses_escapes(tmp_path: Path) -> None:
    assert inside(tmp_path, "vm1") == tmp_path / "vm1"
    assert inside(tmp_path, "vm1", "d0.img") == tmp_path / "vm1" / "d0.img"
    for parts in (("..",), ("../x",), ("/etc/passwd",), ("a", "../../b"), (".",)):
        with pytest.raises(InvalidName):
            inside(tmp_path, *parts)
    outside = tmp_path.parent / f"{tmp_path.name}-victim"
    outside.mkdir()
    os.symlink(outside, tmp_path / "link")
    with pytest.raises(InvalidName):
        inside(tmp_path, "link")
