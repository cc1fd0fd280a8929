"""NotifyTarget: the ``-n`` grammar, the notify_socket matching rule and CC_SELF (§6)."""

from __future__ import annotations

import pytest

from pyrtpproxy.engine.addresses import CC_SELF, Endpoint, NotifyTarget


@pytest.mark.parametrize(
    ("text", "path", "host", "port"),
    [
        ("unix:/run/ns.sock", "/run/ns.sock", "", 0),
        ("/run/ns.sock", "/run/ns.sock", "", 0),
        ("ns.sock", "ns.sock", "", 0),
        ("tcp:127.0.0.1:9999", "", "127.0.0.1", 9999),
        ("tcp:[::1]:9999", "", "::1", 9999),
        ("tcp:::1:9999", "", "::1", 9999),  # the port is after the last colon
        ("tcp:%%CC_SELF%%:5060", "", CC_SELF, 5060),
    ],
)
def test_parse(text: str, path: str, host: str, port: int) -> None:
    target = NotifyTarget.parse(text)
    assert (target.path, target.host, target.port) == (path, host, port)
    assert target.spec == text.encode()
    assert str(target) == text
    assert target.wildcard is (host == CC_SELF)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tcp:127.0.0.1:notaport", "port must be a number 1-65535"),
        ("tcp:127.0.0.1:0", "port must be a number 1-65535"),
        ("tcp:127.0.0.1:65536", "port must be a number 1-65535"),
        ("tcp:127.0.0.1:", "port must be a number 1-65535"),
        ("tcp:127.0.0.1:\u00b2", "port must be a number 1-65535"),
        ("tcp:127.0.0.1", "a tcp: target needs HOST:PORT"),
        ("tcp:localhost:9999", "host must be a numeric IPv4 address, an [IPv6] address or "
         "%%CC_SELF%%"),
        ("tcp::9999", "host must be a numeric IPv4 address, an [IPv6] address or %%CC_SELF%%"),
        ("unix:", "the socket path is empty"),
        ("", "the socket path is empty"),
        ("unix:/" + "x" * 107, "the socket path is longer than 107 bytes"),
    ],
)  # fmt: skip
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        NotifyTarget.parse(text)
    assert str(raised.value) == message


def test_longest_unix_path() -> None:
    path = "/" + "x" * 106
    assert NotifyTarget.parse(path).path == path


@pytest.mark.parametrize(
    ("configured", "name", "matches"),
    [
        ("unix:/run/ns.sock", b"unix:/run/ns.sock", True),
        ("unix:/run/ns.sock", b"/run/ns.sock", True),  # unix: left out by the proxy
        ("/run/ns.sock", b"unix:/run/ns.sock", True),  # ... or on the command line
        ("unix:/run/ns.sock", b"tcp:/run/ns.sock", True),  # either prefix is dropped
        ("unix:/run/ns.sock", b"ns.sock", False),
        ("unix:/run/ns.sock", b"unix:/run/ns.sock2", False),
        ("tcp:127.0.0.1:9999", b"tcp:127.0.0.1:9999", True),
        ("tcp:127.0.0.1:9999", b"127.0.0.1:9999", True),  # OpenSIPS' spelling
        ("tcp:127.0.0.1:9999", b"tcp:127.0.0.1:09999", False),  # strings, not addresses
        ("tcp:[::1]:9999", b"tcp:[::1]:9999", True),
        ("tcp:[::1]:9999", b"tcp:::1:9999", False),
        ("tcp:%%CC_SELF%%:9999", b"tcp:%%CC_SELF%%:9999", True),
        ("tcp:%%CC_SELF%%:9999", b"%%CC_SELF%%:9999", True),
        ("tcp:%%CC_SELF%%:9999", b"tcp:192.0.2.10:9999", False),
    ],
)
def test_matches(configured: str, name: bytes, matches: bool) -> None:
    assert NotifyTarget.parse(configured).matches(name) is matches


def test_address_for() -> None:
    assert NotifyTarget.parse("unix:/run/ns.sock").address_for("192.0.2.10") == "/run/ns.sock"
    assert NotifyTarget.parse("tcp:127.0.0.1:9").address_for("192.0.2.10") == Endpoint(
        "127.0.0.1", 9
    )
    wildcard = NotifyTarget.parse("tcp:%%CC_SELF%%:5060")
    assert wildcard.address_for("192.0.2.10") == Endpoint("192.0.2.10", 5060)
    assert wildcard.address_for("2001:db8::1") == Endpoint("2001:db8::1", 5060)
