"""man/pyrtpproxy.8 renders cleanly and documents exactly the options ``--help`` lists."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

MANPAGE = Path(__file__).resolve().parents[2] / "man" / "pyrtpproxy.8"
OPTION = re.compile(r"^(-{1,2}[A-Za-z0-9][\w-]*)")

pytestmark = pytest.mark.skipif(shutil.which("man") is None, reason="man is not installed")


def render(width: int = 200) -> str:
    env = {
        **os.environ,
        "MANWIDTH": str(width),
        "MANPAGER": "cat",
        "PAGER": "cat",
        "LANG": "C.UTF-8",
    }
    result = subprocess.run(
        ["man", "--warnings", "-l", str(MANPAGE)],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr  # groff warnings
    text = re.sub(r".\x08", "", result.stdout)  # overstrike bold/underline, if any
    return text.replace("\u2010", "-").replace("\u2212", "-")


def help_options(*args: str) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-m", "pyrtpproxy", *args, "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    options: set[str] = set()
    in_options = False
    for line in result.stdout.splitlines():
        if line.startswith("Options:"):
            in_options = True
            continue
        if in_options and line.startswith("  -"):
            for part in line.strip().split("  ")[0].split(", "):
                match = OPTION.match(part)
                if match:
                    options.add(match.group(1))
    return options


def section(text: str, name: str) -> str:
    match = re.search(rf"^{name}\n(.*?)(?=^[A-Z][A-Z ]+\n)", text, re.S | re.M)
    assert match, f"no {name} section"
    return match.group(1)


def tagged_options(body: str) -> set[str]:
    options: set[str] = set()
    for line in body.splitlines():
        if re.match(r"^ {7}-", line):  # a .TP tag
            for part in line.strip().split(", "):
                match = OPTION.match(part.strip())
                if match:
                    options.add(match.group(1))
    return options


def test_renders_without_warnings_at_80_columns() -> None:
    assert "PYRTPPROXY(8)" in render(80)


def test_every_relay_option_is_documented_and_no_other() -> None:
    documented = tagged_options(section(render(), "OPTIONS"))
    listed = help_options()
    assert listed, "could not parse --help"
    assert listed - documented == set(), "in --help, missing from the man page"
    assert documented - listed == set(), "in the man page, not in --help"


def test_every_ctl_option_is_documented_and_no_other() -> None:
    documented = tagged_options(section(render(), "CTL"))
    listed = help_options("ctl") - {"-h", "--help"}
    assert listed
    assert listed == documented


def test_every_extract_option_is_documented_and_no_other() -> None:
    documented = tagged_options(section(render(), "EXTRACT"))
    listed = help_options("extract") - {"-h", "--help"}
    assert listed == documented == {"-o", "--output", "--stereo"}


def test_every_prompt_option_is_documented_and_no_other() -> None:
    documented = tagged_options(section(render(), "PROMPTS"))
    listed = help_options("prompt") - {"-h", "--help"}
    assert listed == documented == {"-o", "--output"}


def test_sections_operators_need() -> None:
    text = render()
    headings = ("CONTROL SOCKETS", "SIGNALS", "METRICS", "CTL", "EXTRACT", "PROMPTS", "FILES")
    for heading in (*headings, "EXAMPLES"):
        assert re.search(rf"^{heading}$", text, re.M), heading
    for transport in ("unix:", "cunix:", "udp:", "udp6:", "tcp:", "tcp6:", "stdio:", "systemd:"):
        assert transport in text
    for signal in ("SIGTERM", "SIGINT", "SIGHUP"):
        assert signal in text
