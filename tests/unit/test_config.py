"""Config decoding: defaults, path resolution, environment overrides, errors naming the key."""

from __future__ import annotations

import pytest

from sdapi.config import config_from_mapping, load_config
from sdapi.errors import ConfigError


def test_defaults_and_relative_paths_resolve_against_the_config_folder(tmp_path):
    path = tmp_path / "conf" / "config.yaml"
    path.parent.mkdir()
    path.write_text("api:\n  keys: [k]\nmodel:\n  path: ./models/x\n")
    config = load_config(path, environ={})
    assert config.data_dir == str(tmp_path / "conf" / "data")
    assert config.model.path == str(tmp_path / "conf" / "models" / "x")
    assert config.api.key_header == "X-API-Key"
    # No default size: a request without one gets its model's native size.
    assert (config.defaults.width, config.defaults.height, config.defaults.strength) == (None, None, 0.75)
    assert config.database_path.parent == config.images_path.parent


def test_the_vae_folders_resolve_against_the_config_folder_too(tmp_path):
    path = tmp_path / "conf" / "config.yaml"
    path.parent.mkdir()
    path.write_text("api:\n  keys: [k]\nmodel:\n  path: ./m\nvae:\n  dir: ./vaes\n  tiny_dir: ./tiny\n")
    config = load_config(path, environ={})
    assert config.vae_path == tmp_path / "conf" / "vaes"
    assert config.tiny_vae_path == tmp_path / "conf" / "tiny"
    assert load_config_default_tiny(tmp_path) == tmp_path / "data" / "vae-tiny"


def load_config_default_tiny(folder):
    path = folder / "plain.yaml"
    path.write_text("api:\n  keys: [k]\nmodel:\n  path: ./m\n")
    return load_config(path, environ={}).tiny_vae_path


def test_models_list_the_default_and_share_the_model_settings(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(
        "api:\n  keys: [k]\nmodel:\n  device: cpu\n  batch_size: 2\n  max_loaded: 1\n"
        "models:\n  - {name: base, path: ./a}\n  - {name: xl, path: ./b, onnx_path: ./b-onnx, default: true}\n"
    )
    config = load_config(path, environ={})
    assert [entry.name for entry in config.model_entries] == ["base", "xl"] and config.default_model.name == "xl"
    xl = config.model_config("xl")
    assert (xl.path, xl.onnx_path, xl.batch_size, xl.device) == (
        str(tmp_path / "b"),
        str(tmp_path / "b-onnx"),
        2,
        "cpu",
    )
    legacy = tmp_path / "legacy.yaml"
    legacy.write_text("api:\n  keys: [k]\nmodel:\n  path: ./m\n")
    [entry] = load_config(legacy, environ={}).model_entries
    assert (entry.name, entry.path, entry.default) == ("default", str(tmp_path / "m"), True)


def test_single_file_config_resolves_like_every_other_path_unless_it_is_a_hub_id(tmp_path):
    path = tmp_path / "conf" / "config.yaml"
    path.parent.mkdir()
    path.write_text("api:\n  keys: [k]\nmodel:\n  path: ./m.safetensors\n  single_file_config: ./sd15-configs\n")
    config = load_config(path, environ={})
    assert config.model.path == str(tmp_path / "conf" / "m.safetensors")
    assert config.model.single_file_config == str(tmp_path / "conf" / "sd15-configs")
    raw = {"api": {"keys": ["k"]}, "model": {"single_file_config": "runwayml/stable-diffusion-v1-5"}}
    assert config_from_mapping(raw, environ={}).model.single_file_config == "runwayml/stable-diffusion-v1-5"


def test_hub_ids_are_left_alone():
    config = config_from_mapping(
        {"api": {"keys": ["k"]}, "model": {"path": "runwayml/stable-diffusion-v1-5"}}, environ={}
    )
    assert config.model.path == "runwayml/stable-diffusion-v1-5"


def test_environment_keys_replace_the_file():
    config = config_from_mapping({"api": {"keys": ["file"]}}, environ={"SDAPI_API_KEYS": " a ,b,, "})
    assert config.api.keys == ["a", "b"]


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ({"api": {"keys": ["k"]}, "extra": 1}, "'extra'"),
        ({"api": {"keys": ["k"], "header": "x"}}, "'api.header'"),
        ({"api": {"keys": "k"}}, "'api.keys'"),
        ({"api": {"keys": ["k"]}, "defaults": {"width": 500}}, "'defaults.width'"),
        ({"api": {"keys": ["k"]}, "defaults": {"width": 4096}}, "'defaults.width'"),
        ({"api": {"keys": ["k"]}, "model": {"dtype": "int8"}}, "'model.dtype'"),
        ({"api": {"keys": [""]}}, "'api.keys'"),
        (
            {"api": {"keys": ["k"]}, "models": [{"name": "a", "path": "x"}, {"name": "a", "path": "y"}]},
            "names a model twice",
        ),
        ({"api": {"keys": ["k"]}, "models": [{"name": "bad name", "path": "x"}]}, "'models[0].name'"),
        ({"api": {"keys": ["k"]}, "models": [{"name": "a", "path": "x", "engine": "onnx"}]}, "'models[0].onnx_path'"),
    ],
)
def test_bad_values_name_the_key(raw, named):
    with pytest.raises(ConfigError) as raised:
        config_from_mapping(raw, environ={})
    assert named in raised.value.message


def test_unreadable_or_non_mapping_files(tmp_path):
    with pytest.raises(ConfigError):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("api: [\n")
    with pytest.raises(ConfigError):
        load_config(tmp_path / "bad.yaml")


def test_the_store_defaults_to_sqlite_and_postgres_takes_its_dsn_from_the_environment():
    assert config_from_mapping({"api": {"keys": ["k"]}}, environ={}).store.backend == "sqlite"
    raw = {"api": {"keys": ["k"]}, "store": {"backend": "postgres", "postgres": {"dsn": "postgresql://file"}}}
    assert config_from_mapping(raw, environ={}).store.postgres.dsn == "postgresql://file"
    from_env = config_from_mapping(raw, environ={"SDAPI_DATABASE_URL": "postgresql://u:secret@db/sdapi"})
    assert from_env.store.postgres.dsn == "postgresql://u:secret@db/sdapi"
    with pytest.raises(ConfigError, match=r"store\.postgres\.dsn"):
        config_from_mapping({"api": {"keys": ["k"]}, "store": {"backend": "postgres"}}, environ={})


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:7"])
def test_model_device_accepts_one_gpu_by_index(device):
    from sdapi.config import with_device

    config = config_from_mapping({"api": {"keys": ["k"]}, "model": {"device": device}}, environ={})
    assert config.model.device == device
    assert with_device(config, "cuda:3").model.device == "cuda:3"


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "cpu:0"])
def test_a_bad_device_is_refused(device):
    from sdapi.config import with_device

    with pytest.raises(ConfigError, match=r"model\.device"):
        config_from_mapping({"api": {"keys": ["k"]}, "model": {"device": device}}, environ={})
    with pytest.raises(ConfigError, match="--device"):
        with_device(config_from_mapping({"api": {"keys": ["k"]}}, environ={}), device)
