"""Prompt files: read whole, shared while unchanged, bounded, clear errors."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from pyrtpproxy.media.prompts import MAX_PROMPT_BYTES, PromptFiles


def test_a_missing_file_is_none_and_an_unchanged_one_is_shared(tmp_path: Path) -> None:
    files = PromptFiles()
    path = tmp_path / "pr.0"
    assert files.read(bytes(path)) is None
    path.write_bytes(b"\xff" * 160)
    first = files.read(bytes(path))
    assert first == b"\xff" * 160
    assert files.read(bytes(path)) is first  # one copy for every player of the file


def test_a_changed_file_is_read_again(tmp_path: Path) -> None:
    files = PromptFiles()
    path = tmp_path / "pr.8"
    path.write_bytes(b"a" * 80)
    assert files.read(bytes(path)) == b"a" * 80
    path.write_bytes(b"b" * 160)
    os.utime(path, ns=(1, 1))  # a different modification time even on a coarse clock
    assert files.read(bytes(path)) == b"b" * 160


def test_the_cache_is_bounded(tmp_path: Path) -> None:
    files = PromptFiles(cache_bytes=100)
    a, b = tmp_path / "a.0", tmp_path / "b.0"
    a.write_bytes(bytes(80))
    b.write_bytes(bytes(80))
    first = files.read(bytes(a))
    files.read(bytes(b))  # 160 bytes > 100: a goes
    again = files.read(bytes(a))
    assert again == first and again is not first


def test_too_large_and_unreadable_files_raise(tmp_path: Path) -> None:
    big = tmp_path / "big.0"
    with big.open("wb") as handle:
        handle.truncate(MAX_PROMPT_BYTES + 1)  # sparse: costs no disk
    with pytest.raises(OSError) as info:
        PromptFiles().read(bytes(big))
    assert info.value.errno == errno.EFBIG
    with pytest.raises(IsADirectoryError):
        PromptFiles().read(bytes(tmp_path))
