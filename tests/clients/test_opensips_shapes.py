"""The exact command shapes OpenSIPS (and Kamailio) send, over their own framings.

OpenSIPS/Kamailio are not packaged here, so the framings are reproduced from
spec/clients.md: ``unix:`` one-shot (writev, one read of at most 255 bytes, no newline,
no half-close), ``cunix:`` persistent (command + ``\\n``, read up to the ``\\n``, nothing
may follow it) and UDP with the client's cookie.  Replies are interpreted as those
clients do (``atoi`` of the first token for ports, ``E`` codes, ints/floats for ``Q``).
"""

from __future__ import annotations

import itertools
import os
import random
import re
import select
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from loopback import Party

from .conftest import Relay, TcpListener, running_relay, wait_for

pytestmark = pytest.mark.timeout(30)

NODE_DISABLING = {"E7", "E8", "E9", "E10"}  # OpenSIPS: "relay internal error"
# One sequence per process, as in the clients: the relay caches replies by cookie for
# ~35 s, so a cookie must never repeat across connections.
COOKIE_SEQ = itertools.count(1)


class UnixOneShot:
    """``unix:``: connect, writev the pieces, one read() of <= 255 bytes, close."""

    name = "unix"

    def __init__(self, path: str) -> None:
        self.path = path

    def raw(self, pieces: list[bytes]) -> bytes:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5.0)
            s.connect(self.path)
            s.sendmsg(pieces)  # writev(); the write side is never shut down
            return s.recv(255)  # one read; the client's buffer is 256 bytes

    def cmd(self, command: str) -> str:
        words = command.split(" ")
        pieces = [w.encode() for pair in zip(words, [" "] * len(words), strict=True) for w in pair]
        reply = self.raw(pieces[:-1])
        assert reply.endswith(b"\n"), f"reply to {command!r} not complete in one read: {reply!r}"
        return reply.decode("latin-1")

    def close(self) -> None:
        return None


class StreamPersistent:
    """``cunix:``/``tcp:``: one connection, ``command\\n``, read until ``\\n``."""

    name = "cunix"

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5.0)
        self.sock.connect(path)

    def cmd(self, command: str) -> str:
        self.sock.sendall(command.encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = self.sock.recv(1024)
            assert chunk, f"connection closed while waiting for the reply to {command!r}"
            buf += chunk
            assert b"\n" not in buf[:-1], f"data after the newline: {buf!r}"  # OpenSIPS: error
        ready, _, _ = select.select([self.sock], [], [], 0.005)
        assert not ready, f"unexpected extra data after the reply to {command!r}"
        return buf.decode("latin-1")

    def close(self) -> None:
        self.sock.close()


class Udp:
    """UDP with a client cookie; the reply must start with ``cookie `` (then stripped)."""

    name = "udp"

    def __init__(self, port: int, kamailio: bool = False) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(5.0)
        self.sock.connect(("127.0.0.1", port))
        self.kamailio = kamailio
        self.rand = random.randrange(1 << 30)

    def cmd(self, command: str) -> str:
        seq = next(COOKIE_SEQ)
        # Kamailio: "<pid>_<seq>", OpenSIPS: "<pid>_<rand>_<seq>".
        middle = "" if self.kamailio else f"{self.rand}_"
        cookie = f"{os.getpid()}_{middle}{seq}"
        self.sock.send(f"{cookie} {command}".encode())
        reply = self.sock.recv(1024).decode("latin-1")
        assert reply.startswith(cookie + " "), (command, reply)
        return reply[len(cookie) + 1 :]

    def close(self) -> None:
        self.sock.close()


Client = UnixOneShot | StreamPersistent | Udp
TRANSPORTS = ["unix", "cunix", "udp"]


def connect(relay: Relay, transport: str, kamailio: bool = False) -> Client:
    if transport == "unix":
        return UnixOneShot(relay.unix)
    if transport == "cunix":
        return StreamPersistent(relay.cunix)
    return Udp(relay.udp_port, kamailio)


def atoi(text: str) -> int:
    match = re.match(r"\s*([+-]?\d+)", text)
    return int(match.group(1)) if match else 0


def port_of(reply: str) -> tuple[int, str | None]:
    """OpenSIPS/Kamailio reading of a U/L reply; asserts it is a success."""
    tokens = reply.split()
    port = atoi(tokens[0]) if tokens else 0
    assert 0 < port <= 65535, f"U/L failed for the client: {reply!r}"
    return port, (tokens[1] if len(tokens) > 1 else None)


def failed_without_disabling(reply: str) -> str:
    """An ``E`` reply OpenSIPS reports as a failed operation (not as a dead node)."""
    code = reply.strip()
    assert re.fullmatch(r"E\d+", code), reply
    assert code not in NODE_DISABLING, f"{code} would disable the OpenSIPS node"
    return code


@pytest.fixture(scope="module")
def notify_listener() -> Iterator[TcpListener]:
    listener = TcpListener()
    try:
        yield listener
    finally:
        listener.close()


@pytest.fixture(scope="module")
def relay(notify_listener: TcpListener) -> Iterator[Relay]:
    with running_relay("-n", f"tcp:127.0.0.1:{notify_listener.port}") as process:
        yield process


@pytest.fixture(params=TRANSPORTS)
def client(request: pytest.FixtureRequest, relay: Relay) -> Iterator[Client]:
    conn = connect(relay, request.param)
    try:
        yield conn
    finally:
        conn.close()


def call_id(client: Client, what: str) -> str:
    return f"{what}-{client.name}-{random.randrange(1 << 30)}@opensips"


# --- health check and capabilities ------------------------------------------------------


def test_health_check(client: Client) -> None:
    assert client.cmd("V") == "20040107\n"
    assert client.cmd("VF 20050322") == "1\n"


@pytest.mark.parametrize("padding", [1, 15, 127, 254])
def test_nul_padded_version_of_opensips_1_9(relay: Relay, padding: int) -> None:
    reply = UnixOneShot(relay.unix).raw([b"V" + b"\0" * padding])
    assert reply == b"20040107\n"


def test_nul_inside_a_token_is_still_a_syntax_error(relay: Relay) -> None:
    assert UnixOneShot(relay.unix).raw([b"V\0x"]) == b"E5\n"  # protocol.md §2


OPENSIPS_PROBES = {
    "20050322": "1",
    "20071116": None,  # optional (repacketization): 0 or 1, see the Z test
    "20081102": "1",
    "20090810": "1",
    "20081224": "1",  # -n is configured on this relay
    "20080403": "1",
    "20150617": "1",
    "20150420": "1",
    "20170313": "0",  # TTL change: the reference answers 0
    "20071218": None,  # recording: 0 or 1, see the R/N/C test
    "20191015": None,
}


def test_capability_probes(client: Client) -> None:
    for date, expected in OPENSIPS_PROBES.items():
        answer = client.cmd(f"VF {date}").strip()
        assert answer in ("0", "1"), (date, answer)
        if expected is not None:
            assert answer == expected, date


def test_notify_capability_needs_a_notify_socket(relay_factory: Callable[..., Relay]) -> None:
    bare = relay_factory()
    assert UnixOneShot(bare.unix).cmd("VF 20081224") == "0\n"


# --- offer / answer ------------------------------------------------------------------


def offer_answer(client: Client, cid: str, mods: str) -> tuple[int, int]:
    offer_port, offer_addr = port_of(client.cmd(f"U{mods} {cid} 127.0.0.1 5000 ft;1"))
    answer_port, answer_addr = port_of(client.cmd(f"L{mods} {cid} 127.0.0.1 5002 ft;1 tt;1"))
    assert offer_addr == answer_addr == "127.0.0.1"
    assert offer_port != answer_port
    return offer_port, answer_port


@pytest.mark.parametrize(
    "mods", ["", "A", "S", "c0,8,101", "R127.0.0.1", "AR127.0.0.1", "Sc0,8,101R127.0.0.1"]
)
def test_offer_answer_with_modifiers(client: Client, relay: Relay, mods: str) -> None:
    cid = call_id(client, "oa")
    offer_port, answer_port = offer_answer(client, cid, mods)
    # The same offer/answer again (re-INVITE) keeps the ports.
    assert port_of(client.cmd(f"U{mods} {cid} 127.0.0.1 5000 ft;1 tt;1"))[0] == offer_port
    assert port_of(client.cmd(f"L{mods} {cid} 127.0.0.1 5002 ft;1 tt;1"))[0] == answer_port
    assert [int(x) for x in relay.ctl(f"Q {cid} ft;1 tt;1").split()][1:] == [0, 0, 0, 0]
    assert client.cmd(f"D {cid} ft tt") == "0\n"
    assert relay.ctl(f"Q {cid} ft;1 tt;1") == "E50\n"


def test_repacketization_follows_vf_20071116(client: Client) -> None:
    supported = client.cmd("VF 20071116") == "1\n"
    cid = call_id(client, "z")
    if supported:
        # OpenSIPS sends Z only now, and the relay must accept it on both sides.
        offer_answer(client, cid, "Z20")
        offer_answer(client, call_id(client, "z2"), "AZ20c0,8,101")
    else:
        # OpenSIPS leaves Z out: the same call without it works...
        offer_answer(client, cid, "c0,8,101")
        # ...and a Z from a client that ignores the answer never kills the node.
        reply = client.cmd(f"UZ20 {call_id(client, 'z3')} 127.0.0.1 5000 ft;1")
        if not atoi(reply):
            failed_without_disabling(reply)
    assert client.cmd(f"D {cid} ft") == "0\n"


def test_ttl_modifier_is_not_sent_and_unknown(client: Client) -> None:
    # VF 20170313 is 0, so OpenSIPS never sends T<n>; a relay rejects it as a modifier.
    assert client.cmd("VF 20170313") == "0\n"
    reply = client.cmd(f"UT30 {call_id(client, 't')} 127.0.0.1 5000 ft;1")
    assert failed_without_disabling(reply) == "E35"


def test_bridge_modifiers(relay_factory: Callable[..., Relay]) -> None:
    bridge = relay_factory("-l", "127.0.0.1/127.0.0.2")
    for transport in TRANSPORTS:
        conn = connect(bridge, transport)
        try:
            cid = f"ie-{transport}"
            # First letter: interface of the SDP sender; second: of the other party.
            assert port_of(conn.cmd(f"UIE {cid} 127.0.0.1 5000 ft;1"))[1] == "127.0.0.2"
            assert port_of(conn.cmd(f"LIE {cid} 127.0.0.1 5002 ft;1 tt;1"))[1] == "127.0.0.1"
            cid = f"ei-{transport}"
            assert port_of(conn.cmd(f"UEI {cid} 127.0.0.1 5000 ft;1"))[1] == "127.0.0.1"
            assert port_of(conn.cmd(f"LEI {cid} 127.0.0.1 5002 ft;1 tt;1"))[1] == "127.0.0.2"
            # Lower case as well (modifiers are case-insensitive), with other flags.
            cid = f"ie2-{transport}"
            assert port_of(conn.cmd(f"Uiec0,8 {cid} 127.0.0.1 5000 ft;1"))[1] == "127.0.0.2"
        finally:
            conn.close()
    assert bridge.info()["active sessions"] == 9


def test_bridge_modifiers_without_bridge_mode(client: Client) -> None:
    cid = call_id(client, "nobridge")
    assert failed_without_disabling(client.cmd(f"UI {cid} 127.0.0.1 5000 ft;1")) == "E12"
    assert failed_without_disabling(client.cmd(f"UE {cid} 127.0.0.1 5000 ft;1")) == "E11"


# --- notifications -------------------------------------------------------------------


def test_notify_socket_spellings_accepted(client: Client, notify_listener: TcpListener) -> None:
    tcp = f"tcp:127.0.0.1:{notify_listener.port}"
    bare = f"127.0.0.1:{notify_listener.port}"
    for n, socket_name in enumerate([tcp, bare]):
        cid = call_id(client, f"nt{n}")
        # Offer without to-tag (7 args) and the in-dialog form with it (8 args).
        port = port_of(client.cmd(f"U {cid} 127.0.0.1 5000 ft;1 {socket_name} T12{n}"))[0]
        assert port_of(client.cmd(f"L {cid} 127.0.0.1 5002 ft;1 tt;1"))[0] != port
        again = client.cmd(f"U {cid} 127.0.0.1 5000 ft;1 tt;1 {socket_name} T12{n}")
        assert port_of(again)[0] == port
        # DTMF-only tag "I".
        assert port_of(client.cmd(f"U {cid} 127.0.0.1 5000 ft;1 tt;1 {socket_name} I"))[0]
        assert client.cmd(f"D {cid} ft tt") == "0\n"
    # D never notifies.
    time.sleep(0.2)
    assert notify_listener.poll() == b""


def test_session_timeout_notifies_opensips_over_tcp(relay_factory: Callable[..., Relay]) -> None:
    listener = TcpListener()
    try:
        tcp = f"tcp:127.0.0.1:{listener.port}"
        bare = f"127.0.0.1:{listener.port}"
        timed = relay_factory("-T", "2", "-n", tcp)
        expected = set()
        for n, transport in enumerate(TRANSPORTS):
            conn = connect(timed, transport)
            try:
                for spelling, socket_name in (("p", tcp), ("b", bare)):
                    tag = f"T{1000 + n}{spelling}"
                    cid = f"to-{transport}-{spelling}"
                    port_of(conn.cmd(f"U {cid} 127.0.0.1 5000 ft;1 {socket_name} {tag}"))
                    port_of(conn.cmd(f"L {cid} 127.0.0.1 5002 ft;1 tt;1"))
                    expected.add(f"{tag}\n".encode())
            finally:
                conn.close()

        def all_arrived() -> bool:
            listener.poll()
            return all(line in listener.data for line in expected)

        assert wait_for(all_arrived, 7.0), listener.data
        # OpenSIPS splits on \n: exactly these lines, nothing else.
        assert sorted(listener.data.splitlines(keepends=True)) == sorted(expected)
        # OpenSIPS accepts the connection only from the relay node's address.
        assert all(peer[0] == "127.0.0.1" for peer in listener.peers)  # type: ignore[index]
        assert timed.info()["active sessions"] == 0
        assert timed.counters("nsess_timeout") == {"nsess_timeout": "6"}
    finally:
        listener.close()


# --- delete / record / query -----------------------------------------------------------


def test_delete_with_bare_tags_removes_indexed_sessions(client: Client, relay: Relay) -> None:
    cid = call_id(client, "del")
    for m in (1, 2):
        port_of(client.cmd(f"U {cid} 127.0.0.1 {5000 + 2 * m} ft;{m}"))
        port_of(client.cmd(f"L {cid} 127.0.0.1 {6000 + 2 * m} ft;{m} tt;{m}"))
    before = relay.info()["active sessions"]
    assert client.cmd(f"D {cid} ft tt") == "0\n"
    assert relay.info()["active sessions"] == before - 2
    for m in (1, 2):
        assert relay.ctl(f"Q {cid} ft;{m} tt;{m}") == "E50\n"
    assert failed_without_disabling(client.cmd(f"D {cid} ft tt")) == "E50"


def test_record_copy_and_stop_shapes(client: Client, relay: Relay) -> None:
    cid = call_id(client, "rec")
    offer_answer(client, cid, "")
    recording = client.cmd("VF 20071218") == "1\n"
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    try:
        replies = {
            "R": client.cmd(f"R {cid} ft tt"),
            "C": client.cmd(f"C {cid} udp:127.0.0.1:{sink.getsockname()[1]} ft;1 tt;1"),
            "N": client.cmd(f"N {cid} ft;1 tt;1"),
        }
    finally:
        sink.close()
    # No -r: R finds nothing to record (E50, protocol.md §5.7).
    assert failed_without_disabling(replies["R"]) == "E50"
    if recording:
        # A UDP copy needs no -r; N stops it (the slot is shared, media-features.md §1.3).
        assert replies["C"] == "0\n"
        assert replies["N"] == "0\n"
        assert failed_without_disabling(client.cmd(f"N {cid} ft;1 tt;1")) == "E50"
    else:
        assert failed_without_disabling(replies["C"]) == "E65"
        # N on a leg that is not being recorded: E50 (§5.8).
        assert failed_without_disabling(replies["N"]) == "E50"
    # Unknown session for each.
    assert client.cmd(f"R nosuch-{cid} ft tt") == "E50\n"
    assert client.cmd(f"C nosuch-{cid} udp:127.0.0.1:9 ft;1 tt;1") == "E50\n"
    assert client.cmd(f"D {cid} ft") == "0\n"


INT_COUNTERS = ["ttl", "npkts_ina", "npkts_ino", "nrelayed", "ndropped"]
RTPA = ["rtpa_nsent", "rtpa_nrcvd", "rtpa_ndups", "rtpa_nlost", "rtpa_perrs"]
FLOAT_COUNTERS = ["longest_ipi", "rtpa_jlast", "rtpa_jmax", "rtpa_javg"]
FLOAT_FORMAT = re.compile(r"\d+\.\d{6}")


def test_query_counters_as_opensips_parses_them(client: Client) -> None:
    cid = call_id(client, "q")
    caller, callee = Party(drain_timeout=0.05), Party(drain_timeout=0.05)
    try:
        port_a = port_of(client.cmd(f"U {cid} 127.0.0.1 {caller.port} ft;1"))[0]
        port_b = port_of(client.cmd(f"L {cid} 127.0.0.1 {callee.port} ft;1 tt;1"))[0]
        caller.send(port_b, 3)
        callee.send(port_a, 2)
        assert wait_for(lambda: callee.total() >= 3 and caller.total() >= 2, 3.0)
    finally:
        caller.close()
        callee.close()

    plain = [int(x) for x in client.cmd(f"Q {cid} ft;1 tt;1").split()]
    assert len(plain) == 5 and plain[1:] == [3, 2, 5, 0] and 0 < plain[0] <= 60

    names = INT_COUNTERS + RTPA + ["longest_ipi"]  # 15 tokens: the most Q takes
    values = client.cmd(f"Q {cid} ft;1 tt;1 {' '.join(names)}").split()
    assert len(values) == len(names)
    ints = [int(v) for v in values[:10]]
    assert ints[1:5] == [3, 2, 5, 0]
    assert ints[5:10] == [3, 3, 0, 0, 0]  # seq 1..3 from the tag1 party: none lost
    assert FLOAT_FORMAT.fullmatch(values[10]) and float(values[10]) >= 0.0

    verbose = client.cmd(f"Qv {cid} ft;1 tt;1 {' '.join(names)}").split()
    pairs = dict(item.split("=", 1) for item in verbose)
    assert list(pairs) == names
    assert [int(pairs[n]) for n in names[1:10]] == ints[1:10]

    floats = client.cmd(f"Q {cid} ft;1 tt;1 {' '.join(FLOAT_COUNTERS)}").split()
    assert len(floats) == 4 and all(FLOAT_FORMAT.fullmatch(v) for v in floats)
    assert all(float(v) >= 0.0 for v in floats)

    assert client.cmd(f"Q {cid} ft;1 tt;1 no_such_counter") == "E62\n"
    assert client.cmd(f"Q {cid} ft tt") == "E50\n"  # ;1 sessions need the suffix
    too_many = " ".join([*names, "rtpa_jlast"])
    assert client.cmd(f"Q {cid} ft;1 tt;1 {too_many}") == "E1\n"
    assert client.cmd(f"D {cid} ft tt") == "0\n"


# --- Kamailio ---------------------------------------------------------------------------


@pytest.fixture(params=["unix", "udp"])
def kamailio(request: pytest.FixtureRequest, relay: Relay) -> Iterator[Client]:
    conn = connect(relay, request.param, kamailio=True)
    try:
        yield conn
    finally:
        conn.close()


def test_kamailio_timeout_socket_form(
    kamailio: Client, relay: Relay, relay_factory: Callable[..., Relay]
) -> None:
    cid = call_id(kamailio, "kto")
    # 7 tokens after U: the to-tag is read as the notify socket name (protocol.md §5.3).
    command = f"U {cid} 127.0.0.1 5000 ft;1 tt;1 udp:127.0.0.1:9999"
    # With -n configured: unknown socket name, ignored; the offer succeeds.
    port = port_of(kamailio.cmd(command))[0]
    # The session was created by ft;1 alone (no to-tag stored): L from the callee works.
    assert port_of(kamailio.cmd(f"L {cid} 127.0.0.1 5002 ft;1 tt;1"))[0] != port
    assert kamailio.cmd(f"D {cid} ft tt") == "0\n"
    # Without -n: E75, the offer fails.
    bare = relay_factory()
    other = connect(bare, kamailio.name, kamailio=True)
    try:
        assert other.cmd(command) == "E75\n"
        assert bare.info()["active sessions"] == 0
    finally:
        other.close()


def test_kamailio_play_stop_and_rtpstat(kamailio: Client) -> None:
    cid = call_id(kamailio, "kp")
    port_of(kamailio.cmd(f"Uc0,8,101 {cid} 127.0.0.1 5000 ft;1"))
    port_of(kamailio.cmd(f"Lc0,8 {cid} 127.0.0.1 5002 ft;1 tt;1"))
    # rtpproxy_stream2uac(file, count): the prompt does not exist -> E60 (§5.10).
    reply = kamailio.cmd(f"P3 {cid} /nonexistent/prompt session ft;1 tt;1")
    assert failed_without_disabling(reply) == "E60"
    assert kamailio.cmd(f"S {cid} ft;1 tt;1") == "0\n"
    assert kamailio.cmd(f"P1 nosuch-{cid} /nonexistent/prompt session ft;1 tt;1") == "E50\n"
    # $rtpstat: "Q <callid> <ftag>;1 <ttag>" - the raw reply goes to the script.
    stat = kamailio.cmd(f"Q {cid} ft;1 tt")
    assert re.fullmatch(r"\d+ 0 0 0 0\n", stat), stat
    assert kamailio.cmd(f"D {cid} ft tt") == "0\n"
    # Without a stored codec list, "session" cannot be resolved: E35.
    cid2 = call_id(kamailio, "kp2")
    port_of(kamailio.cmd(f"U {cid2} 127.0.0.1 5000 ft;1"))
    port_of(kamailio.cmd(f"L {cid2} 127.0.0.1 5002 ft;1 tt;1"))
    assert kamailio.cmd(f"P1 {cid2} /nonexistent/prompt session ft;1 tt;1") == "E35\n"
    assert kamailio.cmd(f"D {cid2} ft") == "0\n"
