"""``pyrtpproxy prompt``: WAV in, ``NAME.0``/``NAME.8`` out; decoded back (as ``pyrtpproxy
extract`` decodes G.711) they match the input within G.711's and the resampler's error."""

from __future__ import annotations

import math
import subprocess
import sys
import wave
from array import array
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from pyrtpproxy.tools.g711 import ALAW_DECODE, ULAW_DECODE, decode
from pyrtpproxy.tools.prompt import PromptError, prompt_command, read_wav, resample

EDGE = 64  # output samples at each end where the filter sees the zero padding


def sine(freq: float, rate: int, seconds: float, amplitude: int = 10000) -> list[int]:
    return [
        round(amplitude * math.sin(2 * math.pi * freq * i / rate))
        for i in range(int(rate * seconds))
    ]


def write_wav(path: Path, samples: list[int], rate: int, channels: int = 1, width: int = 2) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(width)
        out.setframerate(rate)
        if width == 1:
            out.writeframes(bytes((s >> 8) + 128 for s in samples))
        else:
            pcm = array("h", samples)
            if sys.byteorder == "big":
                pcm.byteswap()
            out.writeframes(pcm.tobytes())
    return path


def rms(values: list[float] | list[int]) -> float:
    return math.sqrt(sum(v * v for v in values) / len(values))


def error_ratio(got: list[int], want: list[int]) -> float:
    """RMS of the difference over RMS of the wanted signal, edges left out."""
    got, want = got[EDGE:-EDGE], want[EDGE:-EDGE]
    return rms([g - w for g, w in zip(got, want, strict=True)]) / rms(want)


def convert(tmp_path: Path, wav: Path) -> tuple[list[int], list[int]]:
    """Run the command; the decoded PCMU and PCMA prompts."""
    result = CliRunner().invoke(prompt_command, [str(wav), "-o", str(tmp_path / "welcome")])
    assert result.exit_code == 0, result.output
    ulaw = (tmp_path / "welcome.0").read_bytes()
    alaw = (tmp_path / "welcome.8").read_bytes()
    return list(decode(ulaw, ULAW_DECODE)), list(decode(alaw, ALAW_DECODE))


def test_8khz_mono_round_trips_within_g711(tmp_path: Path) -> None:
    samples = sine(440, 8000, 1.0)
    ulaw, alaw = convert(tmp_path, write_wav(tmp_path / "in.wav", samples, 8000))
    assert len(ulaw) == len(alaw) == 8000
    for decoded in (ulaw, alaw):
        assert all(abs(g - w) <= abs(w) / 16 + 16 for g, w in zip(decoded, samples, strict=True))


@pytest.mark.parametrize("rate", [44100, 48000, 16000, 11025, 22050])
def test_any_rate_is_resampled_to_8khz(tmp_path: Path, rate: int) -> None:
    samples = sine(1000, rate, 0.5)
    ulaw, alaw = convert(tmp_path, write_wav(tmp_path / "in.wav", samples, rate))
    assert len(ulaw) == len(alaw) == len(samples) * 8000 // rate
    want = sine(1000, 8000, 0.5)[: len(ulaw)]
    assert error_ratio(ulaw, want) < 0.05  # about -26 dB: G.711 and the filter together
    assert error_ratio(alaw, want) < 0.05


def test_upsampling_a_low_rate(tmp_path: Path) -> None:
    ulaw, _ = convert(tmp_path, write_wav(tmp_path / "in.wav", sine(300, 4000, 0.5), 4000))
    want = sine(300, 8000, 0.5)
    assert len(ulaw) == 4000 and error_ratio(ulaw, want) < 0.05


@pytest.mark.parametrize(
    ("freq", "low", "high"),
    [
        (3000, 0.99, 1.01),  # the telephone band passes
        (3400, 0.95, 1.01),
        (4400, 0.0, 0.01),  # above 4 kHz: would fold back to 3.6 kHz without a low-pass
        (6000, 0.0, 0.01),
    ],
)
def test_downsampling_filters_what_8khz_cannot_carry(freq: int, low: float, high: float) -> None:
    tone = sine(freq, 48000, 0.5)
    out = list(resample(tone, 48000))
    assert low * rms(tone) <= rms(out[EDGE:-EDGE]) <= high * rms(tone)


def test_8_bit_input(tmp_path: Path) -> None:
    samples = sine(440, 8000, 0.25, amplitude=20000)
    ulaw, _ = convert(tmp_path, write_wav(tmp_path / "in.wav", samples, 8000, width=1))
    assert error_ratio(ulaw, samples) < 0.05


def test_stereo_is_downmixed_and_says_so(tmp_path: Path) -> None:
    left = sine(440, 8000, 0.25)
    interleaved = [v for s in left for v in (s, 0)]  # the right channel is silent
    wav = write_wav(tmp_path / "in.wav", interleaved, 8000, channels=2)
    result = CliRunner().invoke(prompt_command, [str(wav), "-o", str(tmp_path / "st")])
    assert result.exit_code == 0
    assert "2 channels mixed into one" in result.output
    decoded = list(decode((tmp_path / "st.0").read_bytes(), ULAW_DECODE))
    assert error_ratio(decoded, [s // 2 for s in left]) < 0.05


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a wav file at all", "not a PCM WAV file"),
        (b"", "not a PCM WAV file"),
    ],
)
def test_non_wav_input_is_a_clear_error(tmp_path: Path, content: bytes, message: str) -> None:
    junk = tmp_path / "junk.wav"
    junk.write_bytes(content)
    result = CliRunner().invoke(prompt_command, [str(junk), "-o", str(tmp_path / "x")])
    assert result.exit_code == 1
    assert f"pyrtpproxy prompt: {junk}: {message}" in result.output
    assert not (tmp_path / "x.0").exists()


def test_24_bit_and_empty_wavs_are_refused(tmp_path: Path) -> None:
    wide = tmp_path / "wide.wav"
    with wave.open(str(wide), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(3)
        out.setframerate(8000)
        out.writeframes(bytes(300))
    with pytest.raises(PromptError, match="24-bit samples; only 8- and 16-bit"):
        read_wav(wide)
    empty = write_wav(tmp_path / "empty.wav", [], 8000)
    with pytest.raises(PromptError, match="no audio"):
        read_wav(empty)


def test_a_missing_output_directory_is_a_clear_error(tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "in.wav", sine(440, 8000, 0.1), 8000)
    result = CliRunner().invoke(prompt_command, [str(wav), "-o", str(tmp_path / "no" / "x")])
    assert result.exit_code == 1 and "No such file or directory" in result.output


def test_the_console_command(tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "in.wav", sine(440, 16000, 0.1), 16000)
    done = subprocess.run(
        [sys.executable, "-m", "pyrtpproxy", "prompt", str(wav), "-o", str(tmp_path / "w")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "w.0").stat().st_size == (tmp_path / "w.8").stat().st_size == 800


@settings(max_examples=40, deadline=None)
@given(
    rate=st.integers(2000, 96000),
    level=st.integers(-20000, 20000),
    seconds=st.floats(0.05, 0.2),
)
def test_a_constant_stays_constant_at_any_rate(rate: int, level: int, seconds: float) -> None:
    count = int(rate * seconds)
    out = resample([level] * count, rate)
    assert len(out) == count * 8000 // rate
    middle = out[EDGE:-EDGE]
    assert all(abs(v - level) <= 2 for v in middle)
