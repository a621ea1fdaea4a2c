"""What made an image, written into the image itself: AUTOMATIC1111's infotext (the `parameters` PNG text chunk that
"PNG info" tools and model sites read) and sdapi's full record as JSON (an `sdapi` PNG text chunk); a JPEG carries
the infotext and the JSON in its EXIF UserComment. output.embed_parameters: false leaves images bare."""

from __future__ import annotations

import io
import json
import re
from typing import Any

import msgspec
from PIL import ExifTags, Image, PngImagePlugin

from sdapi import __version__
from sdapi.core.params import GenerationParams
from sdapi.core.schedulers import A1111_SAMPLER_NAMES, FLOW_MATCH_EULER

# Scheduler classes that only run on flow matching (the others a flow model runs keep their class name).
FLOW_SCHEDULER_CLASSES = {FLOW_MATCH_EULER}

JSON_CHUNK = "sdapi"
INFOTEXT_CHUNK = "parameters"
# EXIF UserComment with the "UNICODE" character code: UTF-16 text, as AUTOMATIC1111 writes it (piexif's helper).
_UNICODE_PREFIX = b"UNICODE\x00"


class ModelInfo(msgspec.Struct, frozen=True):
    source: str
    sha256: str | None


class ImageRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The full record of one image (the JSON chunk)."""

    prompt: str
    negative_prompt: str | None
    seed: int
    steps: int
    guidance_scale: float
    scheduler: str | None
    width: int
    height: int
    strength: float | None
    model: ModelInfo
    loras: list[dict[str, Any]]
    engine: str
    dtype: str
    sdapi_version: str
    task_id: str
    use_karras_sigmas: bool = False
    embeddings: list[dict[str, Any]] = []  # {name, sha256} of each textual-inversion embedding the prompts name
    # The second pass: {width, height, upscaler, steps, strength, prompt, negative_prompt}; None without one.
    hires: dict[str, Any] | None = None
    # Each ControlNet unit: {model, sha256, preprocessor, preprocessor_options, weight, guidance_start, ...}.
    controlnets: list[dict[str, Any]] = []
    ip_adapters: list[dict[str, Any]] = []  # {model, sha256, weight} of each image prompt
    device: str = ""  # where the run ran: cpu, cuda, cuda:N
    family: str = ""  # the model's family for people: "SD 1.x", "FLUX.1"...
    clip_skip: int = 1  # A1111's numbering: 1 the last CLIP layer
    # A1111's variation seed (this image's: the task's + index) and its strength; the seed-resize size.
    variation_seed: int | None = None
    variation_strength: float = 0.0
    seed_resize_from: tuple[int, int] | None = None
    tiling: str | None = None  # "xy", "x" or "y"
    vae: dict[str, Any] | None = None  # {name, sha256} of a VAE of vae.dir; None: the model's own
    vae_tiling: bool = False
    # Speed levers (sdapi.core.speed): the decoder, the step cache ({mode, interval, branch, threshold}), tomesd's
    # ratio.
    vae_decoder: str = "full"
    step_cache: dict[str, Any] | None = None
    token_merging: float = 0.0


def image_record(
    params: GenerationParams,
    index: int,
    task_id: str,
    model: ModelInfo,
    engine: str,
    dtype: str,
    scheduler: str,
    device: str = "",
    family: str = "",
) -> ImageRecord:
    """The record of image `index` of a task (its seed is the task's seed + index), made by `engine` in `dtype` on
    `device` with the scheduler class `scheduler`: what the run itself reported it ran."""
    return ImageRecord(
        prompt=params.prompt,
        negative_prompt=params.negative_prompt,
        seed=params.seed + index,
        steps=params.num_inference_steps,
        guidance_scale=params.guidance_scale,
        scheduler=scheduler or params.scheduler,
        width=params.width,
        height=params.height,
        strength=params.strength if params.is_image_to_image else None,
        model=model,
        loras=[{"name": spec.name, "sha256": spec.sha256, "weight": spec.weight} for spec in params.loras],
        engine=engine,
        dtype=dtype,
        sdapi_version=__version__,
        task_id=task_id,
        use_karras_sigmas=params.use_karras_sigmas,
        embeddings=[{"name": spec.name, "sha256": spec.sha256} for spec in params.embeddings],
        hires=None if params.hires is None else msgspec.structs.asdict(params.hires),
        controlnets=[msgspec.structs.asdict(unit) for unit in params.controlnets],
        ip_adapters=[msgspec.structs.asdict(prompt) for prompt in params.ip_adapters],
        device=device,
        family=family,
        clip_skip=params.clip_skip,
        variation_seed=None if params.variation_seed is None else params.variation_seed + index,
        variation_strength=params.variation_strength,
        seed_resize_from=params.seed_resize_from,
        tiling=params.tiling,
        vae=None if params.vae is None else {"name": params.vae.name, "sha256": params.vae.sha256},
        vae_tiling=params.vae_tiling,
        vae_decoder=params.vae_decoder,
        step_cache=None if params.step_cache is None else _set_fields(params.step_cache),
        token_merging=params.token_merging,
    )


def _set_fields(struct: Any) -> dict[str, Any]:
    return {name: value for name, value in msgspec.structs.asdict(struct).items() if value is not None}


_CONTROL_RESIZE = {"resize": "Just Resize", "crop": "Crop and Resize", "fill": "Resize and Fill"}
_CONTROL_MODES = {
    "balanced": "Balanced",
    "prompt": "My prompt is more important",
    "controlnet": "ControlNet is more important",
}


def infotext(record: ImageRecord) -> str:
    """AUTOMATIC1111's "parameters" text: the prompt, the negative prompt, then one line of `Key: value` pairs."""
    lines = [record.prompt]
    if record.negative_prompt:
        lines.append(f"Negative prompt: {record.negative_prompt}")
    pairs = [
        ("Steps", record.steps),
        ("Sampler", A1111_SAMPLER_NAMES.get(record.scheduler or "", record.scheduler or "")),
        ("Schedule type", "Karras" if record.use_karras_sigmas else "Automatic"),
        ("CFG scale", record.guidance_scale),
        ("Seed", record.seed),
        ("Size", f"{record.width}x{record.height}"),
    ]
    if record.model.sha256:
        pairs.append(("Model hash", record.model.sha256[:10]))
    pairs.append(("Model", record.model.source.rstrip("/").rsplit("/", 1)[-1]))
    if record.family:
        pairs.append(("Model family", record.family))
    if record.variation_seed is not None and record.variation_strength > 0:
        pairs.append(("Variation seed", record.variation_seed))
        pairs.append(("Variation seed strength", record.variation_strength))
    if record.seed_resize_from is not None:
        pairs.append(("Seed resize from", f"{record.seed_resize_from[0]}x{record.seed_resize_from[1]}"))
    if record.vae is not None:  # A1111's names
        pairs.append(("VAE hash", record.vae["sha256"][:10]))
        pairs.append(("VAE", record.vae["name"]))
    if record.vae_tiling:  # the name A1111's tiled VAE extension writes
        pairs.append(("Tiled VAE", "True"))
    if record.vae_decoder == "tiny":  # A1111 writes its decode method when it is not Full
        pairs.append(("VAE Decoder", "TAESD"))
    if record.token_merging > 0:  # A1111's name
        pairs.append(("Token merging ratio", record.token_merging))
    if record.step_cache is not None:  # sdapi's: "deepcache interval 3 branch 0"
        settings = " ".join(f"{name} {value}" for name, value in record.step_cache.items() if name != "mode")
        pairs.append(("Step cache", f"{record.step_cache['mode']} {settings}".strip()))
    if record.clip_skip > 1:
        pairs.append(("Clip skip", record.clip_skip))
    if record.tiling is not None:  # A1111 writes "Tiling: True"; one axis alone is sdapi's addition
        pairs.append(("Tiling", "True" if record.tiling == "xy" else record.tiling))
    if record.scheduler in FLOW_SCHEDULER_CLASSES:  # A1111's sampler name does not say it ran on flow matching
        pairs.append(("Flow scheduler", record.scheduler))
    if record.strength is not None:
        pairs.append(("Denoising strength", record.strength))
    if record.hires is not None:  # A1111's names for its second pass
        hires = record.hires
        pairs.append(("Denoising strength", hires["strength"]))
        pairs.append(("Hires resize", f"{hires['width']}x{hires['height']}"))
        pairs.append(("Hires steps", hires["steps"]))
        pairs.append(("Hires upscaler", hires["upscaler"]))
        if hires.get("prompt") is not None:
            pairs.append(("Hires prompt", json.dumps(hires["prompt"], ensure_ascii=False)))
    if record.loras:
        hashes = ", ".join(f"{lora['name']}: {lora['sha256'][:12]}" for lora in record.loras)
        pairs.append(("Lora hashes", json.dumps(hashes, ensure_ascii=False)))
    if record.embeddings:
        hashes = ", ".join(f"{embedding['name']}: {embedding['sha256'][:12]}" for embedding in record.embeddings)
        pairs.append(("TI hashes", json.dumps(hashes, ensure_ascii=False)))
    for index, unit in enumerate(record.controlnets):  # as A1111's ControlNet extension writes its units
        described = ", ".join(
            [
                f"Module: {unit['preprocessor']}",
                f"Model: {unit['model']} [{unit['sha256'][:8]}]",
                f"Weight: {unit['weight']}",
                f"Resize Mode: {_CONTROL_RESIZE[unit['resize_mode']]}",
                f"Guidance Start: {unit['guidance_start']}",
                f"Guidance End: {unit['guidance_end']}",
                f"Control Mode: {_CONTROL_MODES[unit['control_mode']]}",
            ]
        )
        pairs.append((f"ControlNet {index}", json.dumps(described, ensure_ascii=False)))
    if record.ip_adapters:
        adapters = ", ".join(f"{p['model']} [{p['sha256'][:8]}]: {p['weight']}" for p in record.ip_adapters)
        pairs.append(("IP-Adapter", json.dumps(adapters, ensure_ascii=False)))
    pairs.append(("Version", f"sdapi {record.sdapi_version}"))
    lines.append(", ".join(f"{key}: {value}" for key, value in pairs))
    return "\n".join(lines)


def encode_with_record(image: Image.Image, output_format: str, quality: int, record: ImageRecord | None) -> bytes:
    """PNG, JPEG or WebP bytes, carrying `record` when given: PNG text chunks, or (JPEG and WebP) an EXIF
    UserComment, which both formats carry the same way."""
    buffer = io.BytesIO()
    if output_format == "png":
        info = None
        if record is not None:
            info = PngImagePlugin.PngInfo()
            info.add_itxt(INFOTEXT_CHUNK, infotext(record))
            info.add_itxt(JSON_CHUNK, msgspec.json.encode(record).decode())
        image.save(buffer, format="PNG", pnginfo=info)
        return buffer.getvalue()
    rgb = image.convert("RGB")
    pil_format = "WEBP" if output_format == "webp" else "JPEG"
    if record is None:
        rgb.save(buffer, format=pil_format, quality=quality)
        return buffer.getvalue()
    exif = Image.Exif()
    comment = infotext(record) + "\n" + msgspec.json.encode(record).decode()
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment] = _UNICODE_PREFIX + comment.encode("utf-16-be")
    rgb.save(buffer, format=pil_format, quality=quality, exif=exif.tobytes())
    return buffer.getvalue()


def read_user_comment(image: Image.Image) -> str | None:
    """The text of a JPEG's or WebP's EXIF UserComment (as written above), or None."""
    raw = image.getexif().get_ifd(ExifTags.IFD.Exif).get(ExifTags.Base.UserComment)
    if not isinstance(raw, bytes) or not raw.startswith(_UNICODE_PREFIX):
        return None
    return raw[len(_UNICODE_PREFIX) :].decode("utf-16-be")


def read_embedded(raw: bytes) -> tuple[str | None, str | None]:
    """The infotext and the JSON record embedded in image bytes by encode_with_record: from a PNG's text chunks or
    a JPEG's or WebP's EXIF UserComment. (None, None) for an image without them; raise OSError for bytes that are no
    image."""
    with Image.open(io.BytesIO(raw)) as image:
        if image.format == "PNG":
            chunks = getattr(image, "text", {})
            return chunks.get(INFOTEXT_CHUNK), chunks.get(JSON_CHUNK)
        comment = read_user_comment(image) if image.format in ("JPEG", "WEBP") else None
    if comment is None:
        return None, None
    text, _newline, last = comment.rpartition("\n")
    if text and last.startswith("{"):
        return text, last
    return comment, None


def parse_infotext(text: str) -> dict[str, str]:
    """AUTOMATIC1111's infotext read back into fields: "Prompt", "Negative prompt", then each `Key: value` of its
    last line ("Size" also as "Size-1"/"Size-2", as A1111 reads it). Quoted values keep their quotes' content."""
    lines = text.split("\n")
    settings = lines.pop() if len(lines) > 1 and re.match(r"^\w[\w ]*: ", lines[-1]) else ""
    prompt: list[str] = []
    negative: list[str] = []
    for line in lines:
        if line.startswith("Negative prompt: ") or negative:
            negative.append(line.removeprefix("Negative prompt: "))
        else:
            prompt.append(line)
    fields = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in _SETTING.findall(settings):
        fields[key] = json.loads(value) if value.startswith('"') else value
    if "x" in fields.get("Size", ""):
        fields["Size-1"], fields["Size-2"] = fields["Size"].split("x", 1)
    return fields


# One `Key: value` pair of an infotext's settings line; a value is either JSON-quoted or runs to the next comma.
_SETTING = re.compile(r'\s*([\w ]+):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')
