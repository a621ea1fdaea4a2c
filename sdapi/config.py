"""Typed configuration: msgspec Structs decoded from config.yaml plus environment overrides.

This module reads the service's settings from both; the result is passed down from the composition root. The few
other readers of the environment are not settings: the client commands' SDAPI_URL and SDAPI_API_KEY (cli.py),
prometheus_client's own PROMETHEUS_MULTIPROC_DIR (observability/metrics.py), and the libraries' log verbosity that
observability/logs.py sets.
"""

from __future__ import annotations

import copy
import ipaddress
import os
from pathlib import Path
from typing import Annotated, Literal

import msgspec
import yaml

from sdapi.core.model_sources import is_local_path
from sdapi.core.request import LoraRequest, StepCache
from sdapi.core.schedulers import ACCEPTED_SCHEDULERS
from sdapi.errors import ConfigError

# Keys shipped in config.yaml that only work for a local try-out start with this marker.
PLACEHOLDER_KEY_PREFIX = "change-me"

# Environment variables that override secrets from the file (documented in the README).
ENV_API_KEYS = "SDAPI_API_KEYS"  # comma-separated; replaces api.keys
ENV_MINIO_ACCESS_KEY = "SDAPI_MINIO_ACCESS_KEY"
ENV_MINIO_SECRET_KEY = "SDAPI_MINIO_SECRET_KEY"
ENV_CALLBACK_SECRET = "SDAPI_CALLBACK_SECRET"
ENV_DATABASE_URL = "SDAPI_DATABASE_URL"  # replaces store.postgres.dsn

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
Side = Annotated[int, msgspec.Meta(ge=64, le=16384, multiple_of=8)]


class _Section(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Base for config sections: an unknown key is an error that names it."""


class ApiKeyConfig(_Section, frozen=True):
    """One API key with its own name, rights and limits (a plain string in api.keys is a key with none)."""

    key: str  # the key a client sends
    # Who owns the tasks this key creates (stored and shown instead of the key); null: "key-" + a short hash.
    name: str | None = None
    # Sees and cancels every task, whoever created it.
    admin: bool = False
    # This key's pending tasks beyond this are refused with 429 (exact across API nodes: counted in the store).
    max_pending: PositiveInt | None = None
    # Submits per minute beyond this are refused with 429 (counted per API node).
    requests_per_minute: PositiveInt | None = None


class ApiConfig(_Section, frozen=True):
    # The accepted keys: strings, or {key, name, admin, max_pending, requests_per_minute}; or SDAPI_API_KEYS. Keys
    # starting "change-me" are placeholders and log a warning at start-up.
    keys: list[str | ApiKeyConfig] = []
    key_header: str = "X-API-Key"  # the request header carrying the key
    # per_key: a task is visible only to the key that created it (and admin keys); shared: to every key.
    isolation: Literal["per_key", "shared"] = "per_key"
    # How long an Idempotency-Key is remembered (per API key).
    idempotency_ttl_hours: Annotated[float, msgspec.Meta(gt=0)] = 24.0

    def key_configs(self) -> list[ApiKeyConfig]:
        """Every key as an ApiKeyConfig (plain strings get the defaults)."""
        return [ApiKeyConfig(key=entry) if isinstance(entry, str) else entry for entry in self.keys]


class ServerConfig(_Section, frozen=True):
    host: str = "0.0.0.0"  # where `sdapi serve` listens (--host overrides it)
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 8000  # its port (--port overrides it)
    # Absolute result URLs are built from this when set, else from the request's own host.
    public_base_url: str | None = None


class MetricsConfig(_Section, frozen=True):
    # GET /metrics in the Prometheus text format; false turns it off.
    enabled: bool = True
    # null: on the API port. A port: served there instead (keeping it off a public API port); `sdapi worker`, which
    # has no API, serves its metrics only this way.
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] | None = None


class ModelConfig(_Section, frozen=True):
    # A local diffusers folder, a hub id, or a single-file .safetensors/.ckpt checkpoint.
    path: str = "./data/models/scenes-sd"
    # auto: ONNX for requests whose LoRA set equals the export's merged set, unless the torch engine runs in bf16
    # on a CPU (measured faster there); torch otherwise. onnx: only the export. torch: never ONNX.
    engine: Literal["auto", "onnx", "torch"] = "auto"
    # Folder written by `python -m export`; null: no ONNX engine.
    onnx_path: str | None = None
    # For a single-file checkpoint: a local diffusers folder (or hub id) whose component configs describe its
    # architecture. Without it diffusers infers the architecture and fetches configs from the hub.
    single_file_config: str | None = None
    # How the model uses guidance_scale: null: what its family and files say (sdapi.families); cfg, embedded
    # (FLUX.1 [dev]) or distilled (no guidance: FLUX.1 [schnell], Z-Image-Turbo, SD 3.5 Large Turbo) to say it.
    guidance: Literal["cfg", "embedded", "distilled"] | None = None
    # diffusers' CPU offload on a GPU, for models larger than its memory: whole modules (model) or layer by layer
    # (sequential: least memory, slowest). Ignored on a CPU.
    offload: Literal["none", "model", "sequential"] = "none"
    # false: load an SD 3.x model without its third text encoder (T5-XXL): about 9 GB less, weaker text.
    text_encoder_3: bool = True
    # auto | cpu | cuda | cuda:N (one worker process per GPU: `sdapi worker --device cuda:1`).
    device: Annotated[str, msgspec.Meta(pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$")] = "auto"
    # auto: float16 on CUDA, bfloat16 on a CPU with AMX, else float32.
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # Images generated together in one batch; a request for more runs as several batches.
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=10)] = 4
    # How many models a worker keeps loaded (least recently used goes first). null: 1 on a CPU, 2 on a GPU.
    max_loaded: Annotated[int, msgspec.Meta(ge=1, le=16)] | None = None

    @property
    def with_optional_text_encoder(self) -> bool:
        """Whether the model loads with its family's optional text encoder (the config key names SD 3.x's)."""
        return self.text_encoder_3


DEFAULT_MODEL_NAME = "default"


class ModelEntry(_Section, frozen=True):
    """One model of `models:`; device, dtype, batch size and max_loaded stay in `model:`, shared by all."""

    # Its name in requests (`model`), and its path, export, engine and single-file configs as `model:` has them.
    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    path: str  # as model.path
    onnx_path: str | None = None  # as model.onnx_path
    engine: Literal["auto", "onnx", "torch"] = "auto"  # as model.engine
    default: bool = False  # the model of requests that name none (else the first)
    single_file_config: str | None = None  # as model.single_file_config
    # How the model uses guidance_scale: null: what its family and files say (sdapi.families); cfg, embedded
    # (FLUX.1 [dev]) or distilled (no guidance: FLUX.1 [schnell], Z-Image-Turbo, SD 3.5 Large Turbo) to say it.
    guidance: Literal["cfg", "embedded", "distilled"] | None = None
    # diffusers' CPU offload on a GPU, for models larger than its memory: whole modules (model) or layer by layer
    # (sequential: least memory, slowest). Ignored on a CPU.
    offload: Literal["none", "model", "sequential"] = "none"
    # false: load an SD 3.x model without its third text encoder (T5-XXL): about 9 GB less, weaker text.
    text_encoder_3: bool = True


class DefaultsConfig(_Section, frozen=True):
    # null: the model's native size (512 for SD 1.x, 768 for SD 2.x 768-v, 1024 for SDXL).
    width: Side | None = None
    height: Side | None = None  # as width
    # null: the model's family's (sdapi.families: 30 and 7.5 for SD 1.x/2.x/SDXL, 4 and 0 for FLUX.1 [schnell]...).
    num_inference_steps: PositiveInt | None = None
    guidance_scale: Annotated[float, msgspec.Meta(ge=0.0, le=30.0)] | None = None  # as num_inference_steps
    strength: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.75  # image-to-image's, when a request gives none
    # None keeps the scheduler the model was saved with.
    scheduler: str | None = None
    # How native requests' prompts are read on SD 1.x, 2.x and SDXL when they do not say (`prompt_syntax`): a1111
    # (weights, BREAK, prompts past 75 tokens in chunks: sdapi.prompts) or plain (as written, cut at 77 tokens).
    prompt_syntax: Literal["a1111", "plain"] = "a1111"
    # Speed levers for requests that do not name them (docs/benchmarks.md: what each saves and costs), applied where
    # the model can run them and left out where it cannot (a request naming one its model cannot run gets a 400).
    # vae_decoder: full (the model's VAE) or tiny (an AutoencoderTiny: the model's own vae_tiny/, or vae.tiny_dir's
    # for its family).
    vae_decoder: Literal["full", "tiny"] = "full"
    # step_cache: {mode: deepcache, interval, branch} (UNet families) or {mode: first_block | taylorseer, ...}
    # (FLUX.1, FLUX.2 [klein]); null: none.
    step_cache: StepCache | None = None
    # token_merging: tomesd's ratio (UNet families), 0 to 0.75; 0: off.
    token_merging: Annotated[float, msgspec.Meta(ge=0.0, le=0.75)] = 0.0


class LimitsConfig(_Section, frozen=True):
    # The largest picture and step count a request may ask for (a 400 beyond).
    max_width: Side = 2048
    max_height: Side = 2048  # as max_width
    max_inference_steps: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 150  # num_inference_steps at most
    # Decoded init_image pixels (width * height); larger inputs are refused with a 400.
    max_init_image_pixels: PositiveInt = 4096 * 4096
    # Request bodies larger than this are refused with a 413. null: what the largest init image the other limits
    # allow can need (see request_limit_bytes).
    max_request_bytes: PositiveInt | None = None

    @property
    def request_limit_bytes(self) -> int:
        """max_request_bytes, or by default the bytes of the largest request these limits admit: an init image as
        large as allowed, as an uncompressed 16-bit RGBA PNG (8 bytes a pixel, PNG's worst case), base64-encoded
        (4/3), plus 1 MiB for the rest of the body."""
        if self.max_request_bytes is not None:
            return self.max_request_bytes
        # Image-to-image rounds the input's sides down to multiples of 8, so sides up to max + 7 are accepted.
        pixels = min(self.max_init_image_pixels, (self.max_width + 7) * (self.max_height + 7))
        return pixels * 8 * 4 // 3 + 2**20


class QueueConfig(_Section, frozen=True):
    # Pending tasks beyond this are refused with 429 and Retry-After.
    max_pending: PositiveInt = 100
    # Runs of one task, counting runs cut short by a crash; after the last the task fails.
    max_attempts: PositiveInt = 3
    # Retry-After (seconds) sent with a 429 when the queue is full.
    retry_after_seconds: PositiveInt = 10
    # On SIGTERM, how long the running generation may take to finish before it is left to be re-run.
    shutdown_grace_seconds: Annotated[float, msgspec.Meta(ge=0.0)] = 30.0
    # A worker holds the task it runs under a lease it renews every third of this; a task whose lease ran out
    # (its worker died or froze) goes back to the queue, or fails once max_attempts runs have started. A worker
    # whose heartbeat stops drops out of /health after this long.
    lease_seconds: Annotated[float, msgspec.Meta(ge=1.0, le=3600.0)] = 30.0
    # A worker takes the oldest pending task for a model it has loaded; another model's task only when none such
    # waits, or when that task has waited this long (so no model's tasks starve).
    affinity_max_wait_seconds: Annotated[float, msgspec.Meta(ge=0.0)] = 30.0
    # Cross-request batching: a worker runs up to this many images from compatible pending tasks (same model, size,
    # steps, scheduler, guidance, mode, LoRA set: sdapi.core.batching) as one denoising batch, each image with its
    # own prompt and seed. 1: every task runs alone (the default until GPU figures support another).
    batch_max: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    # With batch_max > 1: how long a worker holding a task waits for companions to arrive before it runs the
    # batch it has (0: only the tasks already pending join).
    batch_wait_ms: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 25


class OnnxConfig(_Section, frozen=True):
    # Tried in order, keeping those the installed ONNX Runtime offers.
    providers: list[str] = msgspec.field(
        default_factory=lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    # Re-run a task on torch when an ONNX run fails (the task then says engine "torch").
    fallback_to_torch: bool = False


class MinioConfig(_Section, frozen=True):
    # host:port of the S3 API, as the service reaches it.
    endpoint: str = "localhost:9000"
    access_key: str = ""  # or SDAPI_MINIO_ACCESS_KEY
    secret_key: str = ""  # or SDAPI_MINIO_SECRET_KEY
    secure: bool = False  # https to the endpoint
    # Set, so presigning never needs a network call to look the bucket's region up.
    region: str = "us-east-1"
    bucket: str = "sd-images"  # created at start-up when missing
    # Object keys start with this (e.g. "sdapi/"); the rest is random.
    prefix: str = ""
    # public: http(s)://endpoint/bucket/key (the seed's style; the bucket must allow anonymous reads).
    # presigned: a GET URL valid for presign_ttl seconds, signed anew on every read of the task.
    url_mode: Literal["public", "presigned"] = "public"
    # How clients reach MinIO when that differs from `endpoint`, e.g. https://cdn.example.com.
    public_base_url: str | None = None
    presign_ttl: Annotated[int, msgspec.Meta(ge=1, le=7 * 24 * 3600)] = 3600  # seconds a presigned URL is valid
    # Connect/read timeout of one S3 call.
    timeout_seconds: Annotated[float, msgspec.Meta(gt=0)] = 10.0


class StorageConfig(_Section, frozen=True):
    # local: files under data_dir/images, served at /images; minio: any S3 endpoint (storage.minio).
    backend: Literal["local", "minio"] = "local"
    # Tries per image upload before the task fails; waits between tries double from retry_backoff_seconds.
    upload_attempts: Annotated[int, msgspec.Meta(ge=1, le=10)] = 4
    retry_backoff_seconds: Annotated[float, msgspec.Meta(ge=0)] = 0.5  # the first wait between upload tries
    minio: MinioConfig = MinioConfig()


class CallbacksConfig(_Section, frozen=True):
    # Seconds for one POST (connect + send + answer).
    timeout: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    # Tries per delivery. With backoff_base 30 the waits are 30, 60, 120, 240, 480 s (each +-25% jitter):
    # 6 attempts over about 15.5 minutes.
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=20)] = 6
    backoff_base: Annotated[float, msgspec.Meta(ge=0)] = 30.0  # seconds before the second attempt, doubling
    # Standard Webhooks signing secret ("whsec_<base64>" or any string); or SDAPI_CALLBACK_SECRET.
    secret: str | None = None
    # Private ranges (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7) become allowed; loopback, link-local,
    # multicast and unspecified addresses stay refused unless listed in allowed_hosts.
    allow_private_networks: bool = False
    # Host names or CIDRs always allowed, e.g. ["receiver.lan", "192.168.31.0/24", "127.0.0.1/32"].
    allowed_hosts: list[str] = []
    # Seconds to resolve a callback host when checking it at submit time.
    resolve_timeout: Annotated[float, msgspec.Meta(gt=0)] = 3.0
    # Deliveries sent at the same time.
    max_concurrent: Annotated[int, msgspec.Meta(ge=1, le=100)] = 8


class PostgresConfig(_Section, frozen=True):
    # libpq connection string or URL, e.g. postgresql://sdapi@db:5432/sdapi; or SDAPI_DATABASE_URL (keeps the
    # password out of the file). Point it at PostgreSQL or a session-mode pooler: LISTEN needs a session.
    dsn: str | None = None
    # Connections each process keeps (the change feed's listener is one more).
    pool_size: Annotated[int, msgspec.Meta(ge=1, le=100)] = 10


class StoreConfig(_Section, frozen=True):
    # sqlite: one file under data_dir, no setup (one machine; several `sdapi worker` processes may share it).
    # postgres: several API nodes and workers on several machines.
    backend: Literal["sqlite", "postgres"] = "sqlite"
    postgres: PostgresConfig = PostgresConfig()


class RetentionConfig(_Section, frozen=True):
    # Finished tasks older than this many days are deleted with their images, init images and delivery records
    # (GET then answers 404). null: keep everything.
    days: Annotated[float, msgspec.Meta(gt=0)] | None = None


class CompatConfig(_Section, frozen=True):
    # How long a compatibility dialect (OpenAI /v1/images, AUTOMATIC1111 /sdapi/v1) waits for its task before it
    # answers with a timeout and cancels the task.
    wait_seconds: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 600.0
    # The model id GET /v1/models lists and /v1/images accepts (besides omitting it).
    model_id: str = "sdapi"


class OutputConfig(_Section, frozen=True):
    # Write each image's generation parameters into it (PNG text chunks; JPEG EXIF UserComment). Turn off where
    # prompts must not travel with the images.
    embed_parameters: bool = True


class PreviewsConfig(_Section, frozen=True):
    # Live previews (sdapi.previews): a running task's picture after every this-many steps (5: steps 5, 10, 15 and
    # 20 of 20), on the SSE stream, GET /api/v1/tasks/{id}?preview=1, A1111's /progress and OpenAI's image
    # streaming. 0: none. A request's preview_every_steps overrides it. Drawing one costs a small matrix product, not
    # a VAE call.
    every_steps: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 5
    # The longest side of a preview, in pixels (a smaller picture keeps its own size).
    max_side: Annotated[int, msgspec.Meta(ge=16, le=1024)] = 256
    # How previews are encoded (the dialects that name a format re-encode them: A1111's live_previews_image_format,
    # OpenAI's output_format).
    format: Literal["jpeg", "webp"] = "jpeg"
    # The encoder's quality (1-100): 70 keeps a 256-pixel preview near 8 kB.
    quality: Annotated[int, msgspec.Meta(ge=1, le=100)] = 70
    # A diffusers AutoencoderTiny folder (TAESD, TAESDXL, TAESD3, TAEF1: one made for the model's latents) that
    # draws previews instead of the latent-to-RGB map: sharper, and worth it on a GPU. null: the map.
    decoder: str | None = None
    # How long an API node still shows a preview another process posted (a run killed mid-way leaves its last one
    # this long at most).
    keep_seconds: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 120.0


class StylesConfig(_Section, frozen=True):
    # An AUTOMATIC1111 styles.csv (name,prompt,negative_prompt; {prompt} marks where the request's prompt goes),
    # applied by name through the native `styles` field and A1111's `styles`, listed by /sdapi/v1/prompt-styles;
    # read again when it changes. null: data_dir/styles.csv (no file: no styles).
    file: str | None = None


class LorasConfig(_Section, frozen=True):
    # Folder of .safetensors LoRA/LoHa/LoKr files; null: data_dir/loras.
    dir: str | None = None
    # Applied to every request (a house style); a request naming the same LoRA overrides its weight.
    defaults: list[LoraRequest] = []
    max_per_request: Annotated[int, msgspec.Meta(ge=0, le=32)] = 5  # LoRAs one request may name
    # Files whose prepared ΔW stay in memory (least recently used first out).
    cache_size: Annotated[int, msgspec.Meta(ge=1, le=256)] = 8
    # Larger files are listed with an error and refused on use.
    max_file_mb: Annotated[float, msgspec.Meta(gt=0)] = 1024.0


class EmbeddingsConfig(_Section, frozen=True):
    # Folder of textual-inversion embeddings (.safetensors, .pt, .bin); null: data_dir/embeddings. A prompt uses
    # one by writing its name (the file's stem).
    dir: str | None = None
    # Larger files are listed with an error and refused on use (embeddings are kilobytes).
    max_file_mb: Annotated[float, msgspec.Meta(gt=0)] = 50.0


class UpscalersConfig(_Section, frozen=True):
    # Folder of neural upscalers (ESRGAN-family .pth/.safetensors) for the high-resolution pass and the A1111
    # extras; null: data_dir/upscalers.
    dir: str | None = None
    max_file_mb: Annotated[float, msgspec.Meta(gt=0)] = 512.0  # larger files are listed with an error, not read


class ControlNetConfig(_Section, frozen=True):
    # Folder of ControlNet models: diffusers folders (config.json + weights) and single .safetensors files; a
    # model's name is its folder name or file stem. null: data_dir/controlnet.
    dir: str | None = None
    # Most units in one request (Multi-ControlNet).
    max_units: Annotated[int, msgspec.Meta(ge=1, le=8)] = 3
    # ControlNet models kept loaded per worker (least recently used out).
    cache_size: Annotated[int, msgspec.Meta(ge=1, le=16)] = 2
    # Folder of the models the model-based preprocessors run (depth: a transformers depth-estimation model in
    # annotators_dir/depth); null: data_dir/annotators.
    annotators_dir: str | None = None


class VaeConfig(_Section, frozen=True):
    # Folder of VAEs a request may run instead of its model's own (`vae`, A1111's sd_vae): diffusers folders and
    # single .safetensors files of diffusers' tensor names; a VAE's name is its folder's name or file's stem.
    # null: data_dir/vae.
    dir: str | None = None
    # VAEs kept loaded per worker (least recently used out).
    cache_size: Annotated[int, msgspec.Meta(ge=1, le=16)] = 2
    # Decode (and encode) in tiles, diffusers' tiled VAE, when a request does not say (`vae_tiling`) and its final
    # picture has more pixels than this: a large picture's VAE pass then fits in memory, at a small cost in time
    # and a blend over the tiles' seams (4-7 of 255: docs/benchmarks.md). null: never unless asked. Default: 2048
    # x 2048, where a whole decode of SD 1.5's VAE holds activations of 2 GiB each.
    tiling_above_pixels: Annotated[int, msgspec.Meta(ge=0)] | None = 4194304
    # Folder of tiny decoders (diffusers' AutoencoderTiny, TAESD's kind) by family: tiny_dir/<family>/ (sd1, sdxl,
    # sd3, flux, ...) for `vae_decoder: tiny`; a model's own vae_tiny/ folder comes first (the default model ships
    # one). null: data_dir/vae-tiny.
    tiny_dir: str | None = None


class IpAdapterConfig(_Section, frozen=True):
    # Folder of IP-Adapter files, each with an image_encoder/ folder beside it (one level of subfolders too, as
    # the published repositories' models/ and sdxl_models/); null: data_dir/ip-adapter.
    dir: str | None = None


class Config(_Section, frozen=True):
    data_dir: str = "./data"  # the SQLite database (sdapi.sqlite3) and local images (images/)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"  # the lowest level logged
    # text: one readable line each; json: one JSON object per line (time, level, logger, message, task_id,
    # request_id) for a log pipeline.
    log_format: Literal["text", "json"] = "text"
    # Prompts are user content: logged only when this is true. Keys, callback secrets and images never are.
    log_prompts: bool = False
    api: ApiConfig = ApiConfig()
    server: ServerConfig = ServerConfig()
    model: ModelConfig = ModelConfig()
    defaults: DefaultsConfig = DefaultsConfig()
    limits: LimitsConfig = LimitsConfig()
    queue: QueueConfig = QueueConfig()
    store: StoreConfig = StoreConfig()
    output: OutputConfig = OutputConfig()
    previews: PreviewsConfig = PreviewsConfig()
    styles: StylesConfig = StylesConfig()
    retention: RetentionConfig = RetentionConfig()
    compat: CompatConfig = CompatConfig()
    metrics: MetricsConfig = MetricsConfig()
    # Several models: requests choose one with `model`. Empty: the one model of `model.path`, named "default".
    models: list[ModelEntry] = []
    onnx: OnnxConfig = OnnxConfig()
    storage: StorageConfig = StorageConfig()
    callbacks: CallbacksConfig = CallbacksConfig()
    loras: LorasConfig = LorasConfig()
    embeddings: EmbeddingsConfig = EmbeddingsConfig()
    upscalers: UpscalersConfig = UpscalersConfig()
    controlnet: ControlNetConfig = ControlNetConfig()
    ip_adapter: IpAdapterConfig = IpAdapterConfig()
    vae: VaeConfig = VaeConfig()

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def database_path(self) -> Path:
        return self.data_path / "sdapi.sqlite3"

    @property
    def images_path(self) -> Path:
        return self.data_path / "images"

    @property
    def tensorrt_cache_path(self) -> Path:
        return self.data_path / "tensorrt-cache"

    @property
    def styles_path(self) -> Path:
        return Path(self.styles.file) if self.styles.file else self.data_path / "styles.csv"

    @property
    def loras_path(self) -> Path:
        return Path(self.loras.dir) if self.loras.dir else self.data_path / "loras"

    @property
    def embeddings_path(self) -> Path:
        return Path(self.embeddings.dir) if self.embeddings.dir else self.data_path / "embeddings"

    @property
    def upscalers_path(self) -> Path:
        return Path(self.upscalers.dir) if self.upscalers.dir else self.data_path / "upscalers"

    @property
    def controlnet_path(self) -> Path:
        return Path(self.controlnet.dir) if self.controlnet.dir else self.data_path / "controlnet"

    @property
    def ip_adapter_path(self) -> Path:
        return Path(self.ip_adapter.dir) if self.ip_adapter.dir else self.data_path / "ip-adapter"

    @property
    def vae_path(self) -> Path:
        return Path(self.vae.dir) if self.vae.dir else self.data_path / "vae"

    @property
    def tiny_vae_path(self) -> Path:
        return Path(self.vae.tiny_dir) if self.vae.tiny_dir else self.data_path / "vae-tiny"

    @property
    def annotators_path(self) -> Path:
        folder = self.controlnet.annotators_dir
        return Path(folder) if folder else self.data_path / "annotators"

    @property
    def model_entries(self) -> list[ModelEntry]:
        """The models served, each with its name; the first is the default unless one says default: true. Without
        `models:`, the one model of `model.path`, named "default"."""
        if not self.models:
            model = self.model
            return [
                ModelEntry(
                    name=DEFAULT_MODEL_NAME,
                    path=model.path,
                    onnx_path=model.onnx_path,
                    engine=model.engine,
                    default=True,
                    single_file_config=model.single_file_config,
                    guidance=model.guidance,
                    offload=model.offload,
                    text_encoder_3=model.text_encoder_3,
                )
            ]
        default = next((entry.name for entry in self.models if entry.default), self.models[0].name)
        return [msgspec.structs.replace(entry, default=entry.name == default) for entry in self.models]

    @property
    def default_model(self) -> ModelEntry:
        return next(entry for entry in self.model_entries if entry.default)

    def model_config(self, name: str) -> ModelConfig:
        """The `model:` settings with the path, export and engine of model `name`: what an engine is built from."""
        chosen = next(entry for entry in self.model_entries if entry.name == name)
        return msgspec.structs.replace(
            self.model,
            path=chosen.path,
            onnx_path=chosen.onnx_path,
            engine=chosen.engine,
            single_file_config=chosen.single_file_config,
            guidance=chosen.guidance,
            offload=chosen.offload,
            text_encoder_3=chosen.text_encoder_3,
        )

    def placeholder_keys(self) -> list[str]:
        """The configured API keys that are the shipped placeholder (for the start-up warning)."""
        return [entry.key for entry in self.api.key_configs() if entry.key.startswith(PLACEHOLDER_KEY_PREFIX)]


def _resolve_paths(raw: dict[str, object], base: Path) -> None:
    """Make relative paths in the raw config relative to the config file's folder, not the CWD."""
    data_dir = raw.get("data_dir", "./data")
    if isinstance(data_dir, str):
        raw["data_dir"] = str((base / Path(data_dir).expanduser()).resolve())
    for folder_section, key in (
        ("loras", "dir"),
        ("embeddings", "dir"),
        ("upscalers", "dir"),
        ("controlnet", "dir"),
        ("controlnet", "annotators_dir"),
        ("ip_adapter", "dir"),
        ("vae", "dir"),
        ("vae", "tiny_dir"),
    ):
        section = raw.get(folder_section)
        if isinstance(section, dict) and isinstance(section.get(key), str):
            section[key] = str((base / Path(section[key]).expanduser()).resolve())
    models = raw.get("models")
    for model in [raw.get("model"), *(models if isinstance(models, list) else [])]:
        if not isinstance(model, dict):
            continue
        # path and single_file_config may name a hub id instead: those stay as written.
        for key in ("path", "single_file_config"):
            value = model.get(key)
            if isinstance(value, str) and is_local_path(value, base):
                model[key] = str((base / Path(value).expanduser()).resolve())
        if isinstance(model.get("onnx_path"), str):
            model["onnx_path"] = str((base / Path(model["onnx_path"]).expanduser()).resolve())


def _section(raw: dict[str, object], *path: str) -> dict[str, object]:
    """The nested mapping at `path`, created when missing."""
    node = raw
    for depth, name in enumerate(path):
        child = node.setdefault(name, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config key '{'.'.join(path[: depth + 1])}' must be a mapping")
        node = child
    return node


def _apply_environment(raw: dict[str, object], environ: dict[str, str]) -> None:
    """Let secrets come from the environment instead of the file."""
    if keys := environ.get(ENV_API_KEYS):
        _section(raw, "api")["keys"] = [key.strip() for key in keys.split(",") if key.strip()]
    if access_key := environ.get(ENV_MINIO_ACCESS_KEY):
        _section(raw, "storage", "minio")["access_key"] = access_key
    if secret_key := environ.get(ENV_MINIO_SECRET_KEY):
        _section(raw, "storage", "minio")["secret_key"] = secret_key
    if secret := environ.get(ENV_CALLBACK_SECRET):
        _section(raw, "callbacks")["secret"] = secret
    if database_url := environ.get(ENV_DATABASE_URL):
        _section(raw, "store", "postgres")["dsn"] = database_url


def _check_consistency(config: Config) -> None:
    """Rules that span keys, which the per-field types cannot express."""
    if not config.api.keys:
        raise ConfigError(f"config key 'api.keys' is empty: set at least one key (or {ENV_API_KEYS})")
    entries = config.api.key_configs()
    if any(not entry.key for entry in entries):
        raise ConfigError("config key 'api.keys' contains an empty key")
    if len({entry.key for entry in entries}) != len(entries):
        raise ConfigError("config key 'api.keys' lists a key twice")
    if config.defaults.scheduler is not None and config.defaults.scheduler not in ACCEPTED_SCHEDULERS:
        raise ConfigError(
            f"config key 'defaults.scheduler': unknown scheduler {config.defaults.scheduler!r}; "
            f"choose one of {', '.join(ACCEPTED_SCHEDULERS)}"
        )
    if config.model.engine == "onnx" and not config.model.onnx_path:
        raise ConfigError("config key 'model.onnx_path' is required when 'model.engine' is onnx")
    for entry in config.callbacks.allowed_hosts:
        if not entry or any(character.isspace() for character in entry) or ("/" in entry and not _is_network(entry)):
            raise ConfigError(f"config key 'callbacks.allowed_hosts': {entry!r} is neither a host name nor a CIDR")
    if config.storage.backend == "minio" and not (config.storage.minio.access_key and config.storage.minio.secret_key):
        raise ConfigError(
            "config keys 'storage.minio.access_key' and 'storage.minio.secret_key' are required for the minio "
            f"backend (or set {ENV_MINIO_ACCESS_KEY} and {ENV_MINIO_SECRET_KEY})"
        )
    if config.store.backend == "postgres" and not config.store.postgres.dsn:
        raise ConfigError(
            f"config key 'store.postgres.dsn' is required for the postgres store backend (or set {ENV_DATABASE_URL})"
        )
    if config.defaults.width is not None and config.defaults.width > config.limits.max_width:
        raise ConfigError("config key 'defaults.width' is larger than 'limits.max_width'")
    if config.defaults.height is not None and config.defaults.height > config.limits.max_height:
        raise ConfigError("config key 'defaults.height' is larger than 'limits.max_height'")
    names = [model.name for model in config.models]
    if len(set(names)) != len(names):
        raise ConfigError("config key 'models' names a model twice")
    if sum(model.default for model in config.models) > 1:
        raise ConfigError("config key 'models': more than one model has default: true")
    for index, model in enumerate(config.models):
        if model.engine == "onnx" and not model.onnx_path:
            raise ConfigError(f"config key 'models[{index}].onnx_path' is required when its engine is onnx")
    if (config.defaults.num_inference_steps or 0) > config.limits.max_inference_steps:
        raise ConfigError("config key 'defaults.num_inference_steps' is larger than 'limits.max_inference_steps'")


def _is_network(value: str) -> bool:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return True


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


def with_device(config: Config, device: str) -> Config:
    """`config` with model.device replaced (`sdapi worker --device cuda:1`), checked like the config key."""
    model = msgspec.to_builtins(config.model)
    model["device"] = device
    try:
        checked = msgspec.convert(model, type=ModelConfig, strict=True)
    except msgspec.ValidationError:
        raise ConfigError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N") from None
    return msgspec.structs.replace(config, model=checked)


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
