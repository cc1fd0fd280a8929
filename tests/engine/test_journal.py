"""The journal's file format (pyrtpproxy.state, holding engine/persist.py's values):
whatever a disk or a hand leaves in it, reading it answers sessions, skipped entries or
"unusable", never a crash; and a journal set aside is kept for the operator."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyrtpproxy.engine.persist import SessionState
from pyrtpproxy.state import JournalError, decode, encode, load, write_atomically

from .support import make_engine, run

WRITTEN_AT = 1_700_000_000.0


def _journal() -> bytes:
    engine = make_engine()
    run(engine, b"U c1 127.0.0.1 5000 ft", now=0.0)
    run(engine, b"L c1 127.0.0.1 5002 ft tt", now=0.0)
    run(engine, b"U c2 127.0.0.1 6000 f2", now=0.0)
    return encode(engine.export_sessions(0.0), WRITTEN_AT)


JOURNAL = _journal()
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=30,
)


def _read(data: bytes) -> list[SessionState] | None:
    """The sessions, or None for a journal that cannot be used; anything else raised
    fails the test."""
    try:
        return decode(data, WRITTEN_AT).sessions
    except JournalError:
        return None


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes(data: bytes) -> None:
    _read(data)
    _read(JOURNAL[: len(data)])  # a journal cut short anywhere


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=1), st.lists(st.integers(0, 40), max_size=4), json_values)
def test_any_value_anywhere_in_an_entry(session: int, path: list[int], value: Any) -> None:
    document = json.loads(JOURNAL)
    node = document["sessions"][session]
    for step in path:  # walk into the entry as far as it goes, then replace what is there
        if not isinstance(node, list) or not node or not isinstance(node[step % len(node)], list):
            break
        node = node[step % len(node)]
    if isinstance(node, list) and node:
        node[path[-1] % len(node) if path else 0] = value
    decoded = decode(json.dumps(document).encode(), WRITTEN_AT)
    # the other entry is untouched and still read
    assert len(decoded.sessions) + len(decoded.bad_entries) == 2
    assert len(decoded.sessions) >= 1


def test_round_trip_moves_times_by_the_time_away() -> None:
    (later,) = [s for s in decode(JOURNAL, WRITTEN_AT + 7.5).sessions if s.call_id == b"c1"]
    (now,) = [s for s in decode(JOURNAL, WRITTEN_AT).sessions if s.call_id == b"c1"]
    assert later.created_at == now.created_at - 7.5
    assert later.legs[0].expires_at == now.legs[0].expires_at - 7.5  # type: ignore[operator]
    assert later.legs[0].port == now.legs[0].port > 0


def test_an_unusable_journal_is_set_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "state.json"
    write_atomically(str(path), b"\x00garbage")
    with caplog.at_level(logging.ERROR, "pyrtpproxy.state"):
        assert load(str(path)) == []
    assert not path.exists() and (tmp_path / "state.json.bad").read_bytes() == b"\x00garbage"
    assert "not a journal (corrupt)" in caplog.text
    assert load(str(path)) == []  # no journal: no sessions, nothing logged
    assert list(tmp_path.iterdir()) == [tmp_path / "state.json.bad"]  # no temp file left
