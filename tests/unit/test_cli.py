"""The command line: check, run, help, version, and no tracebacks for user mistakes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tdsl.cli import main

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
GOOD = "kernel neg(x: f32[N]) -> (y: f32[N]) {\n    y = -x\n}\n"
BAD = "kernel f(x: f32[N]) -> (y: f32[N]) {\n    y[i] = x[k] + q\n}\n"


@pytest.fixture
def files(tmp_path):
    good = tmp_path / "good.tdsl"
    good.write_text(GOOD)
    bad = tmp_path / "bad.tdsl"
    bad.write_text(BAD)
    return good, bad


def test_check_clean(files, capsys):
    assert main(["check", str(files[0])]) == 0
    assert "good.tdsl: ok (neg)" in capsys.readouterr().out


def test_check_reports_every_error(files, capsys):
    assert main(["check", str(files[0]), str(files[1])]) == 1
    err = capsys.readouterr().err
    assert f"{files[1]}:2:14: error: index 'k' is not defined on the left side" in err
    assert f"{files[1]}:2:19: error: unknown name 'q'" in err
    assert "    y[i] = x[k] + q\n                 ^" in err
    assert "Traceback" not in err


def test_check_missing_file(capsys):
    assert main(["check", "/nonexistent.tdsl"]) == 1
    assert "no such file: /nonexistent.tdsl" in capsys.readouterr().err


def test_check_binary_file(tmp_path, capsys):
    path = tmp_path / "bin.tdsl"
    path.write_bytes(b"\xff\xfe\x00kernel")
    assert main(["check", str(path)]) == 1
    assert "is not UTF-8 text" in capsys.readouterr().err


def test_run_reference(capsys):
    assert main(["run", str(SAMPLES / "softmax.tdsl"), "--target", "reference",
                 "--size", "B=3", "--size", "N=5", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "softmax(x: f32[B, N]) -> (y: f32[B, N])" in out
    assert "x float32[3, 5]" in out
    assert "y: float32[3, 5] min" in out
    assert "time: load" in out and "first call" in out


def test_run_difference_is_relative_to_the_largest_reference_value():
    """A sum that cancels to nearly zero must not make a tiny error look large."""
    import numpy as np

    from tdsl.cli import _difference

    want = np.array([1.0, 1e-6], np.float32)
    assert _difference(np.array([1.0, 1.1e-6], np.float32), want).endswith(
        "(1e-07 of the largest reference value)")
    assert _difference(want.copy(), want) == "0"
    assert "inf of the largest" in _difference(np.array([np.inf, 0], np.float32), want)
    assert _difference(np.zeros(0), np.zeros(0)) == "0 (empty)"


def test_run_picks_kernel_and_reports_unknown(capsys):
    path = str(SAMPLES / "matmul.tdsl")
    assert main(["run", path, "-k", "matvec", "-t", "reference", "--repeat", "0"]) == 0
    assert "matvec(" in capsys.readouterr().out
    assert main(["run", path, "-k", "nope", "-t", "reference"]) == 1
    assert "no kernel 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("size", ["N", "N=x", "=3"])
def test_run_bad_size(size, capsys):
    assert main(["run", str(SAMPLES / "softmax.tdsl"), "-t", "reference", "-s", size]) == 1
    assert "--size expects SYMBOL=INTEGER" in capsys.readouterr().err


def test_run_unknown_symbol(capsys):
    assert main(["run", str(SAMPLES / "softmax.tdsl"), "-t", "reference", "-s", "Q=3"]) == 1
    assert "has no shape symbol Q" in capsys.readouterr().err


def test_run_with_compile_error(files, capsys):
    assert main(["run", str(files[1]), "-t", "reference"]) == 1
    assert "error: index 'k'" in capsys.readouterr().err


def test_help_and_version():
    for args in (["--help"], ["check", "--help"], ["run", "--help"], ["--version"]):
        done = subprocess.run([sys.executable, "-m", "tdsl", *args], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert ("usage: tdsl" in done.stdout) or ("tdsl 0." in done.stdout)


def test_console_script_no_traceback(files):
    done = subprocess.run(["tdsl", "check", str(files[1])], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1
    assert "error: index 'k'" in done.stderr and "Traceback" not in done.stderr
