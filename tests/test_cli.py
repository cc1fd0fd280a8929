"""Command-line spellings that reach the configuration."""

from __future__ import annotations

import pytest

from pyrtpproxy.cli import build_config, relay_command
from pyrtpproxy.config import Config, ConfigError


def _config(*args: str) -> Config:
    ctx = relay_command.make_context("pyrtpproxy", ["-f", "-s", "stdio:", *args])
    return build_config(ctx.params)


@pytest.mark.parametrize(
    ("args", "threshold"),
    [
        ((), None),
        (("--overload_prot",), 0.9),  # rtpproxy's spelling, no value: its 0.90
        (("--overload_prot=0.5",), 0.5),
        (("--overload_prot", "0.75"), 0.75),
        (("--overload_prot=1",), 1.0),
    ],
)
def test_overload_protection_spellings(args: tuple[str, ...], threshold: float | None) -> None:
    assert _config(*args).overload_threshold == threshold


@pytest.mark.parametrize("value", ["0", "1.5", "high", "90"])
def test_overload_threshold_out_of_range_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="--overload_prot wants a load between 0 and 1"):
        _config(f"--overload_prot={value}")
