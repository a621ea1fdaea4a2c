"""python -m export --model SRC --out DIR [--lora FILE_OR_NAME[:WEIGHT] ...] [--fp16] [--optimize]"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from export.exporter import DEFAULT_OPSET, ExportError, export_model, parse_lora_argument
from sdapi.observability.logs import mute_import_warnings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export", description="Export a Stable Diffusion model to ONNX")
    parser.add_argument("--model", required=True, help="diffusers folder, hub id, or .safetensors/.ckpt file")
    parser.add_argument("--out", required=True, type=Path, help="export folder to create")
    parser.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="FILE_OR_NAME[:WEIGHT]",
        help="merge a LoRA/LoHa/LoKr (repeatable; weight defaults to 1.0)",
    )
    parser.add_argument(
        "--loras-dir",
        type=Path,
        default=Path("data/loras"),
        help="where --lora NAME is looked up (default: data/loras)",
    )
    parser.add_argument("--fp16", action="store_true", help="export in fp16 (needs a CUDA device)")
    parser.add_argument("--optimize", action="store_true", help="run onnxruntime's transformer optimizer on the UNet")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    mute_import_warnings()
    try:
        loras = [parse_lora_argument(text, arguments.loras_dir) for text in arguments.lora]
        manifest = export_model(
            arguments.model,
            arguments.out,
            loras,
            fp16=arguments.fp16,
            optimize=arguments.optimize,
            opset=arguments.opset,
            force=arguments.force,
        )
    except ExportError as error:
        print(f"export failed: {error}", file=sys.stderr)
        return 2
    merged = ", ".join(f"{lora.name}:{lora.weight:g}" for lora in manifest.loras) or "none"
    print(f"exported {arguments.model} to {arguments.out} ({manifest.precision}, LoRAs: {merged})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
