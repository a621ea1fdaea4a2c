"""python -m export on the tiny model: the folder and its manifest, its errors, and its LoRA arguments."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from datetime import datetime

import pytest

import export.exporter as exporter
from export.exporter import ExportError, LoraArgument, export_model, parse_lora_argument
from tests.support.services import (
    REPO_ROOT,
)


def test_the_export_folder_and_its_manifest(merged_export, tiny_model, lora_folder):
    for part in ("text_encoder", "unet", "vae_encoder", "vae_decoder"):
        assert (merged_export / part / "model.onnx").stat().st_size > 1000
    assert (merged_export / "tokenizer" / "vocab.json").is_file()
    assert (merged_export / "scheduler" / "scheduler_config.json").is_file()
    manifest = json.loads((merged_export / "export.json").read_text())
    assert manifest["source"] == str(tiny_model)
    digest = hashlib.sha256()
    for weights in sorted(p for p in tiny_model.rglob("*.safetensors")):
        digest.update(str(weights.relative_to(tiny_model)).encode())
        digest.update(weights.read_bytes())
    assert manifest["source_sha256"] == digest.hexdigest()
    assert [(lora["name"], lora["weight"]) for lora in manifest["loras"]] == [("style_loha", 0.8), ("style_lokr", -0.5)]
    for lora in manifest["loras"]:
        assert lora["sha256"] == hashlib.sha256((lora_folder / lora["file"]).read_bytes()).hexdigest()
    assert manifest["precision"] == "fp32" and manifest["opset"] == 17
    assert manifest["optimization"] in ("cpu fusions", "cpu fusions without attention")
    assert {"torch", "diffusers", "optimum", "onnxruntime", "sdapi"} <= set(manifest["versions"])
    assert datetime.fromisoformat(manifest["created_at"]).tzinfo is not None


def test_a_failed_export_leaves_no_folder_behind(tmp_path, tiny_model, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError(5, "simulated I/O failure while writing export.json")

    monkeypatch.setattr(exporter, "write_manifest", fail)
    out = tmp_path / "never"
    with pytest.raises(OSError):
        export_model(str(tiny_model), out, [], progress=None)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no half-written or temporary folder either


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--model", "/nonexistent/model"], "model not found: /nonexistent/model"),
        (["--lora", "wrong_shapes:1.0"], "does not fit the model"),
        (["--lora", "sdxl_style"], "does not fit the model"),
        (["--lora", "no_such_lora"], "no file 'no_such_lora'"),
        (["--lora", "style_lora:3"], "outside [-2, 2]"),
        (["--fp16"], "CUDA"),
    ],
)
def test_export_errors_say_what_is_wrong(tmp_path, tiny_model, lora_folder, arguments, message):
    command = [
        sys.executable,
        "-m",
        "export",
        "--model",
        str(tiny_model),
        "--out",
        str(tmp_path / "out"),
        "--loras-dir",
        str(lora_folder),
    ]
    if arguments[0] == "--model":
        command[command.index("--model") + 1] = arguments[1]
        arguments = []
    result = subprocess.run([*command, *arguments], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr
    assert not (tmp_path / "out").exists()


def test_an_existing_output_needs_force(plain_export, tiny_model):
    with pytest.raises(ExportError, match="already exists"):
        export_model(str(tiny_model), plain_export, [], progress=None)


def test_lora_arguments(lora_folder):
    assert parse_lora_argument("style_lora", lora_folder) == LoraArgument(lora_folder / "style_lora.safetensors", 1.0)
    path = str(lora_folder / "style_loha.safetensors")
    assert parse_lora_argument(f"{path}:-0.25", None) == LoraArgument(lora_folder / "style_loha.safetensors", -0.25)
