"""What a person sees while an export works (cli/progress.py, export/progress.py): the live
display under a pseudo-terminal, one plain line per finished step without one."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import write_recipe
from mobilegen.cli.main import app
from mobilegen.cli.progress import PlainSteps, export_progress, split_step, timing_line
from mobilegen.export.progress import Silent
from mobilegen.export.run import StepTimer

ANSI = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|\][^\x07]*\x07)")
PLAIN_LINE = re.compile(r"^ +\d+\.\d\d s  \S+$")


def run_in_pty(argv: list[str], cols: int = 160, rows: int = 50,
               timeout: float = 300) -> tuple[int, str]:
    """Run argv with a pseudo-terminal as stdin, stdout and stderr (what a person's terminal
    gives it); everything it drew, control sequences included."""
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(cols)}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
        return proc.wait(timeout=30), b"".join(chunks).decode("utf-8", "replace")
    finally:
        os.close(master)


def test_live_display_under_a_terminal(tmp_path: Path, tiny_ckpt: Path) -> None:
    recipe = write_recipe(tmp_path / "r.toml", tiny_ckpt)
    rc, raw = run_in_pty([sys.executable, "-m", "mobilegen", "export", str(recipe), "--out",
                          str(tmp_path / "out"), "--no-cache"])
    assert rc == 0, raw[-3000:]
    assert "\x1b[" in raw  # drawn in place, not printed line by line
    screen = ANSI.sub("", raw)
    for shown in ("model", "load", "capture", "ort-mobile-cpu ", "export ",
                  "ort-mobile-cpu/denoiser.onnx", "validate", "latency", "pytorch", "total"):
        assert shown in screen, shown
    # counted work: the bar is drawn as soon as counting starts, then follows it to the end
    # (the tiny recipe: 1 warm-up + 3 latency runs, 4 sampling steps)
    for kind in ("latency", "sample"):
        counts = {int(c) for c in re.findall(kind + r" (\d)/4\b", screen)}
        assert 4 in counts and any(0 < c < 4 for c in counts), (kind, counts)
    assert re.search(r"latency 4/4 +\d+\.\d\ds", screen)  # a finished step with its time
    assert re.search(r"[━╺╸]{24} +[123]/4", screen)  # a bar drawn part-way
    assert "step times, slowest first: " in screen  # the summary (stdout is the terminal too)


def test_plain_lines_without_a_terminal(tmp_path: Path, tiny_recipe: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "mobilegen", "export", str(tiny_recipe),
                           "--out", str(out), "--no-cache", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)  # --json: still exactly one document on stdout
    assert doc["out_dir"] == str(out)
    lines = proc.stderr.splitlines()
    assert lines and all(PLAIN_LINE.match(line) for line in lines), proc.stderr
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", proc.stderr)  # no control characters
    names = [line.split("  ")[-1] for line in lines]
    assert names[0] == "load" and "export:ort-mobile-cpu" in names
    assert "latency:ort-mobile-cpu/denoiser.onnx" in names
    assert sorted(names) == sorted(doc["timings_s"])  # one line per timed step, none twice
    for line, name in zip(lines, names, strict=True):
        assert float(line.split()[0]) == pytest.approx(doc["timings_s"][name], abs=0.006)


def test_step_timer_reports_start_end_and_failure() -> None:
    events: list[tuple] = []

    class Recorder(Silent):
        def step_started(self, name: str) -> None:
            events.append(("start", name))

        def step_finished(self, name: str, seconds: float, ok: bool = True) -> None:
            events.append(("end", name, ok, seconds >= 0))

    timer = StepTimer(Recorder())
    with timer.step("load"):
        pass
    with pytest.raises(ValueError), timer.step("capture"):
        raise ValueError("boom")
    assert events == [("start", "load"), ("end", "load", True, True),
                      ("start", "capture"), ("end", "capture", False, True)]
    assert list(timer.times) == ["load"]  # a failed step is not a timing
    names: list[str] = []
    legacy = StepTimer(names.append)  # the older protocol: a callable given step names
    with legacy.step("count"):
        legacy.progress.advance(1, 2)
    assert names == ["count"]


def test_plain_steps_print_finished_steps_only(tmp_path: Path) -> None:
    path = tmp_path / "err.txt"
    with path.open("w") as f:
        plain = PlainSteps(f)
        plain.step_started("load")
        plain.advance(1, 10)
        plain.step_finished("load", 4.2161)
        plain.step_finished("export:android-cpu", 1.0, ok=False)
    assert path.read_text() == "    4.22 s  load\n"


def test_names_and_timing_line() -> None:
    assert split_step("load") == ("model", "load")
    assert split_step("validate:ort-mobile-cpu/denoiser.onnx") == (
        "ort-mobile-cpu/denoiser.onnx", "validate")
    assert split_step("export:android-cpu:fp16") == ("android-cpu", "export fp16")
    line = timing_line({"load": 4.0, "export:ort": 16.5, "count": 0.3, "capture": 75.0}, top=2)
    assert line == ("step times, slowest first: capture 1m15.0s, export:ort 16.5s, 2 more; "
                    "sum 1m35.8s")
    assert timing_line({}) is None


def test_quiet_and_verbose(monkeypatch: pytest.MonkeyPatch, tiny_recipe: Path) -> None:
    monkeypatch.delenv("MOBILEGEN_TOOLCHAIN_OUTPUT", raising=False)
    with export_progress(quiet=True) as progress:
        assert type(progress) is Silent
    with export_progress(verbose=True) as progress:
        assert isinstance(progress, PlainSteps)
        assert os.environ["MOBILEGEN_TOOLCHAIN_OUTPUT"] == "show"  # converters print live
    assert "MOBILEGEN_TOOLCHAIN_OUTPUT" not in os.environ
    result = CliRunner().invoke(app, ["export", str(tiny_recipe), "-q", "-v"])
    assert result.exit_code == 2 and "exclude each other" in result.output
