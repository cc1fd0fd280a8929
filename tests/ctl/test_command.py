"""ctl/command.py: argv rewriting, dispatch of raw commands, exit statuses."""

from __future__ import annotations

import pytest

from protocol.test_sessions_view import EXPECTED, FIRST, SECOND
from pyrtpproxy.config import default_runtime_dir
from pyrtpproxy.ctl.command import default_spec, main, options_first
from pyrtpproxy.ctl.sessions import SessionList, render_sessions, sessions_json

from .conftest import FakeRelayFactory


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], []),
        (["sessions"], ["sessions"]),
        (["top", "--iterations", "1"], ["--iterations", "1", "top"]),
        (["--json", "sessions", "--limit", "5"], ["--json", "--limit", "5", "sessions"]),
        (["-s", "sessions", "V"], ["-s", "sessions", "V"]),  # the value of -s, not the word
        (["--timeout", "1", "top"], ["--timeout", "1", "top"]),
        (["--", "sessions", "--json"], ["--", "sessions", "--json"]),
        (["V", "sessions"], ["V", "sessions"]),
        (["Q", "call", "top"], ["Q", "call", "top"]),
    ],
)
def test_options_first(argv: list[str], expected: list[str]) -> None:
    assert options_first(argv) == expected


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(argv)
        raise SystemExit(0)  # standalone click always exits; this only guards a return
    out, err = capsys.readouterr()
    code = exited.value.code
    return (code if isinstance(code, int) else 1), out, err


def test_raw_command_and_exit_statuses(
    fake_relay: FakeRelayFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    relay = fake_relay("udp", lambda command: b"E8" if command.startswith(b"D") else b"0")
    spec = str(relay.spec)
    assert run(["-s", spec, "D", "call", "tag"], capsys) == (1, "E8\n", "")
    assert run(["-s", spec, "U", "c", "1.2.3.4", "5", "t"], capsys) == (0, "0\n", "")
    assert relay.received[-1].endswith(b" U c 1.2.3.4 5 t")


def test_unreachable_relay_exits_3(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["-s", f"unix:{tmp_path}/none.sock", "--timeout", "0.2", "V"], capsys)
    assert (code, out) == (3, "") and err.startswith("pyrtpproxy ctl: ")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-s", "udp:1.2.3.4:notaport", "V"], "-s"),
        ([], "Missing argument"),
        (["--timeout", "0", "V"], "--timeout"),
    ],
)
def test_usage_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(argv, capsys)
    assert code == 2 and message in err


def test_an_unreachable_kind_is_no_answer(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["-s", "stdio:", "V"], capsys)
    assert code == 3 and "give the socket's address" in err


def test_default_spec_is_the_relays_default_socket() -> None:
    assert default_spec() == f"unix:{default_runtime_dir()}/rtpproxy.sock"


def test_sessions_words(fake_relay: FakeRelayFactory, capsys: pytest.CaptureFixture[str]) -> None:
    relay = fake_relay("udp", lambda command: EXPECTED)
    spec = str(relay.spec)
    listing = SessionList((FIRST, SECOND), 2, 60)
    assert run(["sessions", "-s", spec], capsys) == (
        0,
        "\n".join(render_sessions(listing)) + "\n",
        "",
    )
    assert run(["sessions", "--json", "-s", spec], capsys) == (0, sessions_json(listing) + "\n", "")
    code, out, _ = run(["-s", spec, "top", "--iterations", "1"], capsys)
    assert code == 0 and out.count("pyrtpproxy top - ") == 1


def test_sessions_against_rtpproxy(
    fake_relay: FakeRelayFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    relay = fake_relay("unix", lambda command: b"E0")
    code, out, err = run(["-s", str(relay.spec), "sessions"], capsys)
    assert (code, out) == (3, "")
    assert err == "pyrtpproxy ctl: the relay does not support session listing (E0)\n"
