"""What ships: the wheel (and so the container image, which installs it) holds the service and the export tool, never
the training code or the test harness."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_the_wheel_holds_sdapi_and_export_only(tmp_path):
    # Built from a copy with training/ and tests/ beside the packages, as in the repository (setuptools builds in
    # the source tree: the copy keeps its build/ folder out of the checkout).
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for part in ("sdapi", "export", "training", "tests"):
        shutil.copytree(REPO_ROOT / part, source / part, ignore=ignore)
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / part, source / part)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-w", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = tmp_path.glob("sdapi-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    packages = {name.split("/", 1)[0] for name in names if "/" in name and ".dist-info/" not in name}
    assert packages == {"sdapi", "export"}, packages
    assert "sdapi/api/playground/index.html" in names or any(n.startswith("sdapi/api/playground/") for n in names)
    assert "sdapi/models/default_model.py" in names and "sdapi/observability/stages.py" in names
    assert not [name for name in names if "devtools" in name or "train_scenes" in name or "/testing/" in name]
