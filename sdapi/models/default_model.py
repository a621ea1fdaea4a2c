"""Install the trained default model (training.train_scenes) from the repository, its sums checked.

The weights are committed (models/scenes-sd/, data/loras/monochrome.safetensors,
data/embeddings/sdapi-orange-ball.safetensors) with a manifest of sha256 sums beside the model
(models/scenes-sd.manifest.json). `install_default_model` checks every listed file and copies the pipeline to
the folder config.yaml points at, atomically; a file whose sum differs (a truncated clone, a Git LFS pointer, a
local edit) stops it with the file's name.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
SHIPPED_MODEL = REPOSITORY / "models" / "scenes-sd"


class ManifestMismatch(RuntimeError):
    """A shipped file is missing or its sha256 differs from the manifest's."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(manifest_path: Path) -> dict[str, str]:
    """Check every file the manifest lists (paths relative to the repository, the manifest's parent's parent);
    return them."""
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    root = manifest_path.resolve().parent.parent
    files: dict[str, str] = manifest["files"]
    for relative, expected in sorted(files.items()):
        path = root / relative
        if not path.is_file():
            raise ManifestMismatch(f"{relative}: missing (listed in {manifest_path.name})")
        actual = sha256_of(path)
        if actual != expected:
            raise ManifestMismatch(f"{relative}: sha256 {actual} is not the manifest's {expected}")
    return files


def manifest_of(source: Path) -> Path:
    """The manifest beside a shipped pipeline folder: models/scenes-sd -> models/scenes-sd.manifest.json."""
    return source.with_name(source.name + ".manifest.json")


def install_default_model(target: Path, source: Path = SHIPPED_MODEL, manifest_path: Path | None = None) -> Path:
    """Verify the shipped files, then copy the pipeline folder `source` to `target` (replacing it). The style LoRA
    and the embedding stay where they ship (data/loras, data/embeddings: the config's default folders)."""
    verify(manifest_path or manifest_of(source))
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".default-model-", dir=target.parent))
    try:
        shutil.copytree(source, staging / "model")
        if target.exists():
            shutil.rmtree(target)
        (staging / "model").rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
