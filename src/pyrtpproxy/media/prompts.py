"""Prompt files for ``P``, read whole and shared by every player of the same file.

Music on hold plays one file to many calls at once: the bytes are read once and kept
while the file is unchanged (same inode, size and modification time, checked with one
``fstat`` per ``P``), up to :data:`CACHE_BYTES` in all, the least recently used going
first. A player holds its own reference, so eviction never cuts a prompt short.
"""

from __future__ import annotations

import errno
import os
from collections import OrderedDict

MAX_PROMPT_BYTES = 16 * 1024 * 1024  # 35 minutes of G.711 in one file
CACHE_BYTES = 64 * 1024 * 1024

_Identity = tuple[int, int, int, int]  # device, inode, size, mtime_ns


class PromptFiles:
    """``read(path)``: a prompt file's bytes, from the cache while the file is unchanged."""

    def __init__(self, cache_bytes: int = CACHE_BYTES) -> None:
        self._cache: OrderedDict[bytes, tuple[_Identity, bytes]] = OrderedDict()
        self._cache_bytes = cache_bytes
        self._held = 0

    def read(self, path: bytes) -> bytes | None:
        """The whole file (a relative name from the current directory); None if there is
        no such file; :class:`OSError` if it cannot be read or is over the size limit."""
        try:
            with open(path, "rb") as handle:
                st = os.fstat(handle.fileno())
                identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
                cached = self._cache.get(path)
                if cached is not None and cached[0] == identity:
                    self._cache.move_to_end(path)
                    return cached[1]
                if st.st_size > MAX_PROMPT_BYTES:
                    raise OSError(
                        errno.EFBIG, f"prompt of {st.st_size} bytes, over {MAX_PROMPT_BYTES}"
                    )
                data = handle.read(MAX_PROMPT_BYTES)
        except FileNotFoundError:
            return None
        self._keep(path, identity, data)
        return data

    def _keep(self, path: bytes, identity: _Identity, data: bytes) -> None:
        old = self._cache.pop(path, None)
        if old is not None:
            self._held -= len(old[1])
        self._cache[path] = (identity, data)
        self._held += len(data)
        while self._held > self._cache_bytes and self._cache:
            _path, (_identity, evicted) = self._cache.popitem(last=False)
            self._held -= len(evicted)
