"""The session table: call-id plus creating tag, with rtpproxy's matching rules (§4.1)."""

from __future__ import annotations

from collections.abc import Iterator

from .session import Session, Side


def _media_suffix(tag: bytes) -> bytes:
    """The ``;N`` media-index suffix of a tag, or b""."""
    pos = tag.rfind(b";")
    return tag[pos:] if pos >= 0 else b""


def _same_or_media(creator: bytes, tag: bytes) -> bool:
    """``tag`` names ``creator`` itself or one of its ``tag;N`` media sessions."""
    return creator == tag or (creator.startswith(tag) and creator[len(tag) : len(tag) + 1] == b";")


class SessionTable:
    """All live sessions, grouped by call-id."""

    def __init__(self) -> None:
        # tuples, not lists: a call-id has one session or a few, and a tuple is smaller
        self._by_call: dict[bytes, tuple[Session, ...]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Session]:
        for sessions in list(self._by_call.values()):
            yield from sessions

    def __contains__(self, session: object) -> bool:
        return isinstance(session, Session) and session in self._by_call.get(session.call_id, ())

    def add(self, session: Session) -> None:
        """Insert a new session."""
        self._by_call[session.call_id] = (*self._by_call.get(session.call_id, ()), session)
        self._count += 1

    def remove(self, session: Session) -> None:
        """Remove a session; removing one that is gone is a no-op."""
        sessions = self._by_call.get(session.call_id)
        if sessions is None or session not in sessions:
            return
        # most call-ids have one session: no tuple to rebuild
        left = () if len(sessions) == 1 else tuple(s for s in sessions if s is not session)
        self._count -= 1
        if left:
            self._by_call[session.call_id] = left
        else:
            del self._by_call[session.call_id]

    def find(self, call_id: bytes, tag1: bytes, tag2: bytes | None) -> tuple[Session, Side] | None:
        """Exact lookup used by U, L, Q, P, S, C.

        Forward (tag1 created the session) selects leg B, the leg that receives tag1's
        party's media; reverse (tag2 created it) selects leg A.
        """
        sessions = self._by_call.get(call_id, ())
        for session in sessions:
            if session.tag == tag1:
                return session, Side.B
        if tag2 is not None:
            with_suffix = tag2 + _media_suffix(tag1)
            for session in sessions:
                if session.tag == tag2 or session.tag == with_suffix:
                    return session, Side.A
        return None

    def find_all(
        self, call_id: bytes, from_tag: bytes, to_tag: bytes | None
    ) -> list[tuple[Session, Side]]:
        """Lookup used by D, R and N: ``tag`` also matches every ``tag;N`` session."""
        matches: list[tuple[Session, Side]] = []
        for session in self._by_call.get(call_id, ()):
            if _same_or_media(session.tag, from_tag):
                matches.append((session, Side.B))
            elif to_tag is not None and _same_or_media(session.tag, to_tag):
                matches.append((session, Side.A))
        return matches
