"""Typed configuration: msgspec Structs decoded from config.yaml plus environment overrides.

This module is the only reader of either. The result is passed down from the composition root;
nothing else looks at the file or at os.environ.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Annotated, Literal

import msgspec
import yaml

from sdapi.errors import ConfigError
from sdapi.schedulers import SCHEDULER_NAMES

# Keys shipped in config.yaml that only work for a local try-out start with this marker.
PLACEHOLDER_KEY_PREFIX = "change-me"

# Environment variables that override secrets from the file (documented in the README).
ENV_API_KEYS = "SDAPI_API_KEYS"  # comma-separated; replaces api.keys

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
Side = Annotated[int, msgspec.Meta(ge=64, le=16384, multiple_of=8)]


class _Section(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Base for config sections: an unknown key is an error that names it."""


class ApiConfig(_Section, frozen=True):
    keys: list[str] = []
    key_header: str = "X-API-Key"


class ServerConfig(_Section, frozen=True):
    host: str = "0.0.0.0"
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 8000
    # Absolute result URLs are built from this when set, else from the request's own host.
    public_base_url: str | None = None


class ModelConfig(_Section, frozen=True):
    # A local diffusers folder, a hub id, or a single-file .safetensors/.ckpt checkpoint.
    path: str = "./data/models/tiny-sd"
    # For a single-file checkpoint: a local diffusers folder (or hub id) whose component configs describe its
    # architecture. Without it diffusers infers the architecture and fetches configs from the hub.
    single_file_config: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # Images generated together in one batch; a request for more runs as several batches.
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=10)] = 4


class DefaultsConfig(_Section, frozen=True):
    width: Side = 512
    height: Side = 512
    num_inference_steps: PositiveInt = 30
    guidance_scale: Annotated[float, msgspec.Meta(ge=0.0, le=30.0)] = 7.5
    strength: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.75
    # None keeps the scheduler the model was saved with.
    scheduler: str | None = None


class LimitsConfig(_Section, frozen=True):
    max_width: Side = 2048
    max_height: Side = 2048
    max_inference_steps: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 150
    # Decoded init_image pixels (width * height); larger inputs are refused with a 400.
    max_init_image_pixels: PositiveInt = 4096 * 4096


class QueueConfig(_Section, frozen=True):
    # Pending tasks beyond this are refused with 429 and Retry-After.
    max_pending: PositiveInt = 100
    # Runs of one task, counting runs cut short by a crash; after the last the task fails.
    max_attempts: PositiveInt = 3
    # Retry-After (seconds) sent with a 429 when the queue is full.
    retry_after_seconds: PositiveInt = 10
    # On SIGTERM, how long the running generation may take to finish before it is left to be re-run.
    shutdown_grace_seconds: Annotated[float, msgspec.Meta(ge=0.0)] = 30.0


class StorageConfig(_Section, frozen=True):
    backend: Literal["local"] = "local"


class Config(_Section, frozen=True):
    data_dir: str = "./data"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    api: ApiConfig = ApiConfig()
    server: ServerConfig = ServerConfig()
    model: ModelConfig = ModelConfig()
    defaults: DefaultsConfig = DefaultsConfig()
    limits: LimitsConfig = LimitsConfig()
    queue: QueueConfig = QueueConfig()
    storage: StorageConfig = StorageConfig()

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def database_path(self) -> Path:
        return self.data_path / "sdapi.sqlite3"

    @property
    def images_path(self) -> Path:
        return self.data_path / "images"

    def placeholder_keys(self) -> list[str]:
        """The configured API keys that are the shipped placeholder (for the start-up warning)."""
        return [key for key in self.api.keys if key.startswith(PLACEHOLDER_KEY_PREFIX)]


def _looks_like_local_path(value: str) -> bool:
    return value.startswith((".", "/", "~")) or value.endswith((".safetensors", ".ckpt"))


def _resolve_paths(raw: dict[str, object], base: Path) -> None:
    """Make relative paths in the raw config relative to the config file's folder, not the CWD."""
    data_dir = raw.get("data_dir", "./data")
    if isinstance(data_dir, str):
        raw["data_dir"] = str((base / Path(data_dir).expanduser()).resolve())
    model = raw.get("model")
    if isinstance(model, dict):
        path = model.get("path")
        if isinstance(path, str) and _looks_like_local_path(path):
            model["path"] = str((base / Path(path).expanduser()).resolve())


def _apply_environment(raw: dict[str, object], environ: dict[str, str]) -> None:
    """Let secrets come from the environment instead of the file."""
    if keys := environ.get(ENV_API_KEYS):
        api = raw.setdefault("api", {})
        if not isinstance(api, dict):
            raise ConfigError("config key 'api' must be a mapping")
        api["keys"] = [key.strip() for key in keys.split(",") if key.strip()]


def _check_consistency(config: Config) -> None:
    """Rules that span keys, which the per-field types cannot express."""
    if not config.api.keys:
        raise ConfigError(f"config key 'api.keys' is empty: set at least one key (or {ENV_API_KEYS})")
    if any(not key for key in config.api.keys):
        raise ConfigError("config key 'api.keys' contains an empty key")
    if config.defaults.scheduler is not None and config.defaults.scheduler not in SCHEDULER_NAMES:
        raise ConfigError(
            f"config key 'defaults.scheduler': unknown scheduler {config.defaults.scheduler!r}; "
            f"choose one of {', '.join(SCHEDULER_NAMES)}"
        )
    if config.defaults.width > config.limits.max_width:
        raise ConfigError("config key 'defaults.width' is larger than 'limits.max_width'")
    if config.defaults.height > config.limits.max_height:
        raise ConfigError("config key 'defaults.height' is larger than 'limits.max_height'")
    if config.defaults.num_inference_steps > config.limits.max_inference_steps:
        raise ConfigError("config key 'defaults.num_inference_steps' is larger than 'limits.max_inference_steps'")


def _describe_validation_error(error: msgspec.ValidationError) -> str:
    """Turn msgspec's `... - at `$.api.keys`` into a message that names the config key."""
    text = str(error)
    message, separator, location = text.rpartition(" - at ")
    if not separator:
        message, location = text, ""
    key = location.strip("`").removeprefix("$").lstrip(".")
    if "unknown field" in message:
        unknown = message.split("`")[1]
        key = f"{key}.{unknown}" if key else unknown
        return f"unknown config key '{key}'"
    if "missing required field" in message:
        missing = message.split("`")[1]
        key = f"{key}.{missing}" if key else missing
    return f"config key '{key or '(top level)'}': {message}"


def config_from_mapping(
    raw: dict[str, object], base_dir: Path | None = None, environ: dict[str, str] | None = None
) -> Config:
    """Build a Config from an already-parsed mapping (what load_config does after reading YAML)."""
    raw = copy.deepcopy(raw)
    _apply_environment(raw, dict(os.environ) if environ is None else environ)
    _resolve_paths(raw, base_dir or Path.cwd())
    try:
        config = msgspec.convert(raw, type=Config, strict=True)
    except msgspec.ValidationError as error:
        raise ConfigError(_describe_validation_error(error)) from None
    _check_consistency(config)
    return config


def load_config(path: str | os.PathLike[str], environ: dict[str, str] | None = None) -> Config:
    """Read and validate the YAML config at `path`; raise ConfigError naming the bad key."""
    config_path = Path(path)
    try:
        text = config_path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read config file {config_path}: {error.strerror}") from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {config_path} is not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {config_path} must hold a mapping at the top level")
    return config_from_mapping(raw, config_path.resolve().parent, environ)
