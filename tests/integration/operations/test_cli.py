"""The command line: config errors stop the service naming the key; the placeholder key warns; the tiny model;
installing the shipped default model."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from tests.support.services import REPO_ROOT, ServiceProcess, free_port, generate, write_config


def _serve(config_path):
    return subprocess.run(
        [sys.executable, "-m", "sdapi", "serve", "--config", str(config_path), "--port", "1"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"api": {"keys": ["k"], "keyz": 1}}, "api.keyz"),
        ({"modle": {}}, "modle"),
        ({"defaults": {"width": "big"}}, "defaults.width"),
        ({"queue": {"max_pending": 0}}, "queue.max_pending"),
        ({"model": {"device": "tpu"}}, "model.device"),
        ({"defaults": {"scheduler": "Nope"}}, "defaults.scheduler"),
        ({"api": {"keys": []}}, "api.keys"),
        ({"store": {"backend": "postgres"}}, "store.postgres.dsn"),
    ],
)
def test_a_bad_config_stops_the_service_naming_the_key(tmp_path, changes, named):
    raw = {"api": {"keys": ["k"]}}
    for section, values in changes.items():
        raw[section] = values
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = _serve(path)
    assert result.returncode == 2
    assert named in result.stderr


def test_the_shipped_config_loads_and_its_placeholder_key_is_marked():
    from sdapi.config import load_config

    config = load_config(REPO_ROOT / "config.yaml", environ={})
    assert config.placeholder_keys() == config.api.keys
    assert config.model.path.endswith("data/models/scenes-sd")
    # No size in the shipped config: a request without one gets its model's native size.
    assert (config.defaults.width, config.defaults.height, config.defaults.num_inference_steps) == (None, None, None)


def test_a_placeholder_key_logs_a_warning_without_the_key(tmp_path, tiny_model):
    placeholder = "change-me-please-123"
    config = write_config(tmp_path, tiny_model, api={"keys": [placeholder]})
    with ServiceProcess(config) as process:
        process.wait_ready()
        with process.client(key=placeholder) as client:
            assert generate(client, prompt="a cat")["status"] == "completed"
        log = process.log()
    assert "placeholder" in log
    assert placeholder not in log


def test_make_tiny_model_is_deterministic(tmp_path):
    for name in ("a", "b"):
        subprocess.run(
            [sys.executable, "-m", "sdapi", "make-tiny-model", str(tmp_path / name)],
            check=True,
            cwd=REPO_ROOT,
            capture_output=True,
            timeout=300,
        )
    for weights in [
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
    ]:
        assert (tmp_path / "a" / weights).read_bytes() == (tmp_path / "b" / weights).read_bytes()
    assert (tmp_path / "a" / "model_index.json").is_file()


def test_install_default_model_copies_the_shipped_model_and_refuses_a_corrupt_one(tmp_path):
    import shutil

    def install(*extra):
        return subprocess.run(
            [sys.executable, "-m", "sdapi", "install-default-model", *extra],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )

    result = install(str(tmp_path / "installed"))
    assert result.returncode == 0, result.stderr
    shipped = REPO_ROOT / "models" / "scenes-sd"
    weights = "unet/diffusion_pytorch_model.safetensors"
    assert (tmp_path / "installed" / weights).read_bytes() == (shipped / weights).read_bytes()
    # A copy of the shipped tree whose UNet is a Git LFS pointer (what a clone without LFS would hold).
    copy = tmp_path / "repo"
    shutil.copytree(REPO_ROOT / "models", copy / "models")
    shutil.copytree(REPO_ROOT / "data" / "loras", copy / "data" / "loras")
    shutil.copytree(REPO_ROOT / "data" / "embeddings", copy / "data" / "embeddings")
    (copy / "models" / "scenes-sd" / weights).write_text("version https://git-lfs.github.com/spec/v1\n")
    result = install(str(tmp_path / "refused"), "--shipped", str(copy / "models" / "scenes-sd"))
    assert result.returncode == 1
    assert f"models/scenes-sd/{weights}" in result.stderr
    assert not (tmp_path / "refused").exists()


def test_a_worker_with_a_bad_device_or_an_unreachable_database_stops_with_one_line(tmp_path, tiny_model):
    config = write_config(tmp_path, tiny_model)
    bad_device = subprocess.run(
        [sys.executable, "-m", "sdapi", "worker", "--config", str(config), "--device", "gpu:1"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad_device.returncode == 2 and "--device 'gpu:1'" in bad_device.stderr
    unreachable = write_config(
        tmp_path / "pg",
        tiny_model,
        store={"backend": "postgres", "postgres": {"dsn": f"postgresql://nobody@127.0.0.1:{free_port()}/none"}},
    )
    result = subprocess.run(
        [sys.executable, "-m", "sdapi", "worker", "--config", str(unreachable)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "任务数据库暂时不可用" in result.stderr and "Traceback" not in result.stderr


def test_an_api_node_never_imports_torch(tmp_path, tiny_model):
    """`serve --role api` builds its runtime, starts and answers without the engines (or torch) in the process."""
    config = write_config(tmp_path, tiny_model)
    script = f"""
import asyncio, sys
from sdapi.bootstrap import build_runtime
from sdapi.config import load_config
from sdapi.core.nodes import Role
from sdapi.core.request import GenerationRequest

async def main():
    runtime = build_runtime(load_config({str(config)!r}), role=Role.API)
    await runtime.start()
    task = await runtime.service.submit(GenerationRequest(prompt="queued for a worker"), None)
    health = await runtime.health()
    await runtime.stop()
    assert health.queue_pending == 1 and health.workers == [] and not health.model_loaded, health
    assert runtime.engine is None and runtime.worker is None
    loaded = sorted(name for name in sys.modules if name.split(".")[0] in ("torch", "diffusers", "onnxruntime"))
    print("LOADED", loaded)

asyncio.run(main())
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "LOADED []" in result.stdout


def test_preview_map_fits_and_prints_a_models_latent_to_rgb_map():
    import json

    result = subprocess.run(
        [sys.executable, "-m", "sdapi", "preview-map", str(REPO_ROOT / "models" / "scenes-sd")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["family"] == "sd1" and document["channels"] == 4
    assert len(document["matrix"]) == 4 and all(len(row) == 3 for row in document["matrix"])
    assert len(document["bias"]) == 3 and 0 < document["rms_error"] < 0.5
