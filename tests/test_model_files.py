"""The safetensors header check: every way a model file can be unusable gets its own reason, and a valid file (also
one whose name is not UTF-8) reads as safetensors reads it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sidestep.model_files import UnusableFile, read_header, readable_path, shown


@pytest.fixture
def valid(tmp_path: Path) -> Path:
    path = tmp_path / "model.safetensors"
    save_file({"a": torch.zeros(4, 3), "b": torch.ones(2, dtype=torch.bfloat16)}, path, metadata={"model_version": "turbo"})
    return path


def _header_file(path: Path, header: dict, data: bytes = b"") -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)
    return path


def test_a_valid_file_reads_as_safetensors_reads_it(valid: Path) -> None:
    header = read_header(valid)
    with safe_open(str(valid), framework="pt") as handle:
        assert header.shapes == {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
        assert header.metadata == handle.metadata()
    assert header.dtypes == {"a": "F32", "b": "BF16"}


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "only 0 bytes long"),
        (bytes(4096), "filled with zero bytes"),
        ((40).to_bytes(8, "little") + bytes(40), "filled with zero bytes"),
        ((4000).to_bytes(8, "little") + b"{}", "its header alone needs 4,008 bytes"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:", "Git LFS pointer"),
        (b"<!DOCTYPE html><html>", "web page"),
        (b"\x80\x04\x95" + bytes(20), "PyTorch pickle"),
        (b"PK\x03\x04" + bytes(60), "PyTorch pickle"),
        ((8).to_bytes(8, "little") + b"not json", "not a safetensors header"),
    ],
)
def test_unusable_content_is_named_with_its_reason(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "acestep_v1.5_turbo.safetensors"
    path.write_bytes(content)
    with pytest.raises(UnusableFile, match=reason) as error:
        read_header(path)
    assert str(path) in str(error.value)


def test_truncated_data_unknown_dtype_and_damaged_entries_are_named(tmp_path: Path, valid: Path) -> None:
    data = valid.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:-10])
    with pytest.raises(UnusableFile, match=r"cut short: .* of its .* bytes are there.*Download it again"):
        read_header(cut)
    fp6 = _header_file(tmp_path / "fp6.safetensors", {"w": {"dtype": "F6_E3M2", "shape": [4], "data_offsets": [0, 3]}}, bytes(3))
    with pytest.raises(UnusableFile, match=r"tensor w is stored as 'F6_E3M2'.*bf16, fp16 or fp32"):
        read_header(fp6)
    damaged = _header_file(tmp_path / "damaged.safetensors", {"w": {"dtype": "F32", "shape": "four"}})
    with pytest.raises(UnusableFile, match="entry of tensor 'w' in its header is damaged"):
        read_header(damaged)


def test_a_dangling_link_says_where_it_points(tmp_path: Path) -> None:
    link = tmp_path / "acestep_v1.5_turbo.safetensors"
    link.symlink_to(tmp_path / "unmounted" / "model.safetensors")
    with pytest.raises(UnusableFile, match=r"link to .*unmounted/model.safetensors, which does not exist.*Connect the drive"):
        read_header(link)


def test_a_name_that_is_not_utf8_is_shown_escaped_and_read_through_its_descriptor(tmp_path: Path, valid: Path) -> None:
    folder = tmp_path / os.fsdecode(b"caf\xe9")
    folder.mkdir()
    odd = folder / os.fsdecode(b"t\xfcne.safetensors")
    odd.write_bytes(valid.read_bytes())
    assert shown(odd).endswith("caf\\xe9/t\\xfcne.safetensors")
    assert read_header(odd).shapes == read_header(valid).shapes
    with readable_path(odd) as name, safe_open(name, framework="pt") as handle:
        assert torch.equal(handle.get_tensor("a"), torch.zeros(4, 3))
