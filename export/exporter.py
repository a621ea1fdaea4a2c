"""Converting a Stable Diffusion checkpoint, with LoRAs merged, to an ONNX export folder.

The LoRAs go through sdapi's own adapter code (the torch engine's), so a LoRA baked in here means exactly what it
means when applied at run time. The folder is written under a temporary name beside the target and renamed at the
end: a failed export never leaves a half-written folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

import torch

from sdapi import __version__
from sdapi.core.model_sources import is_local_path
from sdapi.core.request import MAX_LORA_WEIGHT, LoraSpec
from sdapi.engines.loading import load_pipeline
from sdapi.errors import ModelLoadFailed
from sdapi.families import family_of_pipeline
from sdapi.loras.files import AdapterFileError, check_fits
from sdapi.loras.merging import AdapterManager, adapter_targets, target_shapes
from sdapi.models.digests import sha256_file
from sdapi.models.export_manifest import ExportManifest, MergedLora, write_manifest
from sdapi.observability.stages import Stages

DEFAULT_OPSET = 17
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt")


class ExportError(Exception):
    """The export cannot be done; the message says why."""


@dataclass(frozen=True)
class LoraArgument:
    """One `--lora FILE_OR_NAME[:WEIGHT]`."""

    path: Path
    weight: float


def parse_lora_argument(text: str, loras_dir: Path | None) -> LoraArgument:
    """FILE_OR_NAME[:WEIGHT]: a .safetensors path, or a name looked up in the LoRA folder."""
    reference, weight = text, 1.0
    if ":" in text:
        head, _, tail = text.rpartition(":")
        try:
            weight = float(tail)
            reference = head
        except ValueError:
            pass  # a path with a colon in it and no weight
    if not -MAX_LORA_WEIGHT <= weight <= MAX_LORA_WEIGHT:
        raise ExportError(f"--lora {text}: weight {weight} is outside [-{MAX_LORA_WEIGHT:g}, {MAX_LORA_WEIGHT:g}]")
    candidates = [Path(reference)]
    if loras_dir is not None:
        candidates.append(loras_dir / f"{reference}.safetensors")
    for candidate in candidates:
        if candidate.is_file():
            return LoraArgument(candidate, weight)
    where = f" or in {loras_dir}" if loras_dir else ""
    raise ExportError(f"--lora {text}: no file {reference!r}{where}")


def source_sha256(source: str) -> str:
    """A hash of the source's weights: the file itself, or a folder's weight files in name order."""
    path = Path(source)
    if path.is_file():
        return sha256_file(path)
    if path.is_dir():
        digest = hashlib.sha256()
        for weights in sorted(p for p in path.rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file()):
            digest.update(str(weights.relative_to(path)).encode())
            sha256_file(weights, digest)
        return digest.hexdigest()
    return "hub:" + source


def _source_size(source: str) -> int:
    path = Path(source)
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    return 0


def _versions() -> dict[str, str]:
    names = ["torch", "diffusers", "transformers", "optimum", "optimum-onnx", "onnx"]
    versions = {"sdapi": __version__}
    for name in [*names, "onnxruntime", "onnxruntime-gpu"]:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _check_fit(lora: LoraArgument, shapes: dict[str, tuple[int, ...]]) -> None:
    try:
        check_fits(lora.path, shapes)
    except AdapterFileError as error:
        raise ExportError(f"LoRA {lora.path.name} does not fit the model: {error}") from None


def _fusion_options(for_gpu: bool, attention: bool) -> Any:
    """onnxruntime's UNet fusions; NhwcConv, GroupNorm, SkipGroupNorm, BiasSplitGelu and BiasAdd exist only as CUDA
    kernels, so a CPU export keeps the fusions every provider implements."""
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions("unet")
    if not for_gpu:
        options.enable_nhwc_conv = False
        options.enable_group_norm = False
        options.enable_skip_group_norm = False
        options.enable_bias_splitgelu = False
        options.enable_bias_add = False
    if not attention:
        options.enable_attention = False
        options.enable_packed_qkv = False
        options.enable_packed_kv = False
    return options


def _optimize_unet(unet_path: Path, fp16: bool, progress: Callable[[str], None]) -> str:
    """onnxruntime's transformer optimizer for the UNet (fused attention and, for CUDA, GroupNorm/NHWC/bias ops).

    The export is for CUDA exactly when it is fp16. The attention fusion pattern-matches the graph torch wrote and
    fails on some exports; then the other fusions still run. Returns what was applied, for export.json.
    """
    from onnxruntime.transformers.optimizer import optimize_model

    target = "cuda" if fp16 else "cpu"

    def run(attention: bool) -> Any:
        options = _fusion_options(fp16, attention)
        return optimize_model(
            str(unet_path), model_type="unet", opt_level=0, use_gpu=fp16, optimization_options=options
        )

    try:
        optimized, applied = run(attention=True), f"{target} fusions"
    except Exception as error:  # the fusion passes raise TypeError/ValueError/AssertionError on unexpected graphs
        progress(f"    attention fusion does not apply to this graph ({type(error).__name__}); other fusions only")
        try:
            optimized, applied = run(attention=False), f"{target} fusions without attention"
        except Exception as second:
            raise ExportError(f"UNet optimization failed: {type(second).__name__}: {second}") from None
    if fp16:
        optimized.convert_float_to_float16(keep_io_types=False)
    optimized.save_model_to_file(str(unet_path), use_external_data_format=unet_path.stat().st_size > 1_900_000_000)
    return applied


def export_model(
    source: str,
    out: Path,
    loras: list[LoraArgument],
    *,
    fp16: bool = False,
    optimize: bool = False,
    opset: int = DEFAULT_OPSET,
    force: bool = False,
    progress: TextIO | None = sys.stderr,
) -> ExportManifest:
    """Export `source` with `loras` merged into `out`, showing its stages on `progress` (None: silent); raise
    ExportError saying what is wrong."""
    if out.exists() and not force:
        raise ExportError(f"{out} already exists (use --force to replace it)")
    if is_local_path(source) and not Path(source).expanduser().exists():
        raise ExportError(f"model not found: {source}")
    device = "cuda" if fp16 else "cpu"
    if fp16 and not torch.cuda.is_available():
        raise ExportError("--fp16 exports on a CUDA device, and none is available here")
    out.parent.mkdir(parents=True, exist_ok=True)
    needed = 2 * _source_size(source)  # the ONNX files, plus room for the exporter's intermediate files
    free = shutil.disk_usage(out.parent).free
    if needed and free < needed:
        raise ExportError(
            f"no room on disk: the export needs about {needed / 2**30:.1f} GiB in {out.parent}, "
            f"{free / 2**30:.1f} GiB free"
        )
    with Stages(5 + bool(optimize), progress) as stages:
        return _export(source, out, loras, fp16, optimize, opset, device, stages)


def _export(
    source: str,
    out: Path,
    loras: list[LoraArgument],
    fp16: bool,
    optimize: bool,
    opset: int,
    device: str,
    stages: Stages,
) -> ExportManifest:
    stages.stage(f"loading {source}")
    try:
        pipeline = load_pipeline(source, torch.float16 if fp16 else torch.float32)
    except ModelLoadFailed as error:
        raise ExportError(error.message) from None
    pipeline.to(device)

    detected = family_of_pipeline(pipeline).family
    family, parts = detected.name, detected.onnx_parts
    if not parts:
        raise ExportError(
            f"{detected.label} cannot be exported: optimum-onnx has no ONNX pipeline for it "
            f"(serve it with engine: torch, as engine: auto does without onnx_path)"
        )
    if optimize and detected.denoiser != "unet":
        raise ExportError(f"--optimize rewrites UNet graphs; {detected.label}'s {detected.denoiser} is not one")
    stages.stage(f"merging {len(loras)} LoRA(s)")
    targets = adapter_targets(detected, detected.adapter_modules(pipeline))
    shapes = target_shapes(targets)
    merged: list[MergedLora] = []
    specs: list[LoraSpec] = []
    for lora in loras:
        _check_fit(lora, shapes)
        sha = sha256_file(lora.path)
        specs.append(LoraSpec(name=lora.path.stem, weight=lora.weight, sha256=sha))
        merged.append(MergedLora(name=lora.path.stem, file=lora.path.name, weight=lora.weight, sha256=sha))
        stages.detail(f"{lora.path.name} at weight {lora.weight:g}")
    paths = {spec.sha256: lora.path for spec, lora in zip(specs, loras, strict=True)}
    AdapterManager(targets, lambda spec: paths[spec.sha256], cache_size=max(1, len(specs))).activate(specs)

    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        from optimum.exporters.onnx import onnx_export_from_model

        stages.stage(
            f"exporting {', '.join(parts)} ({family}) to ONNX (opset {opset}, {'fp16' if fp16 else 'fp32'}); "
            "this is the long step"
        )
        with _each_component(stages):
            onnx_export_from_model(pipeline, output=staging, opset=opset, device=device, do_validation=False)
        optimization = "none"
        if optimize:
            stages.stage("optimizing the UNet graph")
            optimization = _optimize_unet(staging / "unet" / "model.onnx", fp16, stages.detail)
        stages.stage("writing export.json")
        manifest = ExportManifest(
            source=source,
            source_sha256=source_sha256(source),
            loras=merged,
            precision="fp16" if fp16 else "fp32",
            opset=opset,
            optimization=optimization,
            versions=_versions(),
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            family=family,
        )
        write_manifest(staging, manifest)
        missing = [part for part in parts if not (staging / part / "model.onnx").is_file()]
        if missing:
            raise ExportError(f"the exporter wrote no {', '.join(missing)}")
        stages.stage(f"moving the export into place: {out}")
        # mkdtemp made the folder owner-only; the export must be readable by the service's own user.
        staging.chmod(0o755)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except OSError as error:
        if error.errno == 28:  # ENOSPC
            raise ExportError(f"no room on disk while writing the export in {out.parent}") from None
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


# optimum announces each component it exports on this logger ("Exporting submodel 2/4: UNet2DConditionModel").
_OPTIMUM_CONVERT_LOGGER = "optimum.exporters.onnx.convert"
_SUBMODEL = re.compile(r"Exporting submodel (\d+/\d+): (\w+)")


@contextlib.contextmanager
def _each_component(stages: Stages) -> Iterator[None]:
    """Show each component optimum exports as a detail of the export stage. Its INFO records are caught here and
    kept from optimum's own handler; its warnings, and torch's exporter warnings, become details too (on a
    terminal they would otherwise break the progress line)."""

    class Announcements(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            found = _SUBMODEL.search(record.getMessage())
            if found:
                stages.detail(f"{found.group(2)} ({found.group(1)})")
            elif record.levelno >= logging.WARNING:
                stages.detail(record.getMessage().strip()[:200])

    seen: set[str] = set()

    def show_warning(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
        text = f"{category.__name__}: {str(message).strip().splitlines()[0][:120]}"
        if text not in seen:  # torch's tracer repeats the same warning for every traced call
            seen.add(text)
            stages.detail(text)

    convert_logger = logging.getLogger(_OPTIMUM_CONVERT_LOGGER)
    handler = Announcements()
    saved = convert_logger.level, convert_logger.propagate
    convert_logger.addHandler(handler)
    convert_logger.setLevel(logging.INFO)
    convert_logger.propagate = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = show_warning
            yield
    finally:
        convert_logger.removeHandler(handler)
        convert_logger.setLevel(saved[0])
        convert_logger.propagate = saved[1]
