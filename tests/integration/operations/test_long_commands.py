"""Long commands show their stages: redrawn in place on a terminal (a real pseudo-terminal here), plain lines when
their output goes to a file or a pipe."""

from __future__ import annotations

import io
import os
import pty
import subprocess
import sys

from sdapi.client import Progress
from sdapi.observability.stages import Stages
from tests.support.services import REPO_ROOT


def run_on_a_terminal(command: list[str], timeout: float = 300) -> tuple[int, str]:
    """Run `command` with stdout and stderr on a pseudo-terminal; return its exit code and everything it wrote."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=follower, stderr=follower, stdin=subprocess.DEVNULL)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return process.wait(timeout=timeout), b"".join(chunks).decode("utf-8", errors="replace")


def test_export_on_a_terminal_redraws_one_line_per_stage(tmp_path, tiny_model):
    code, output = run_on_a_terminal(
        [sys.executable, "-m", "export", "--model", str(tiny_model), "--out", str(tmp_path / "onnx")]
    )
    assert code == 0, output[-3000:]
    assert "\r\x1b[2K" in output  # redrawn in place
    for stage in ("[1/5] loading", "[2/5] merging 0 LoRA(s)", "[3/5] exporting", "[4/5] writing export.json"):
        assert f"✓ {stage}" in output, stage
    for component in ("CLIPTextModel (1/4)", "UNet2DConditionModel (2/4)", "AutoencoderKL (4/4)"):
        assert component in output
    # torch's exporter warnings are shown as the stage's detail, not dumped as raw lines across the display.
    assert "warnings.warn(" not in output and "_C._jit_pass" not in output
    assert "done in" in output and (tmp_path / "onnx" / "export.json").is_file()


def test_make_tiny_model_without_a_terminal_prints_plain_lines(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "sdapi", "make-tiny-model", str(tmp_path / "tiny")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[:4] == [
        "[1/4] loading diffusers",
        "[2/4] writing the tokenizer",
        "[3/4] building the sd15 UNet, VAE and text encoder(s)",
        f"[4/4] saving to {tmp_path / 'tiny'}",
    ]
    assert lines[4].startswith("done in") and "\r" not in result.stderr
    assert (tmp_path / "tiny" / "model_index.json").is_file()


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_failed_stage_is_marked_and_silence_is_silent():
    shown = Terminal()
    try:
        with Stages(2, shown) as stages:
            stages.stage("first")
            stages.stage("second")
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert "✓ [1/2] first" in shown.getvalue() and "✗ [2/2] second" in shown.getvalue()
    assert "done in" not in shown.getvalue()
    with Stages(1, None) as quiet:  # stream None: nothing at all
        quiet.stage("nothing shown")


def test_the_clients_progress_bar_on_a_terminal_and_plain_lines_elsewhere():
    terminal, plain = Terminal(), io.StringIO()
    for stream in (terminal, plain):
        progress = Progress(stream)
        progress.show({"status": "pending", "queue_position": 2})
        for percent in (10.0, 30.0, 60.0, 100.0):
            progress.show({"status": "processing", "progress": {"percent": percent}})
        progress.show({"status": "completed", "progress": {"percent": 100.0}})
        progress.close()
    assert "\r[#########" in terminal.getvalue() and "processing 60%" in terminal.getvalue()
    assert plain.getvalue().splitlines() == [
        "queued, 2 ahead",
        "processing 0%",
        "processing 25%",
        "processing 50%",
        "processing 100%",
        "completed 100%",
    ]
