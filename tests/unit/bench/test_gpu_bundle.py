"""bench/gpu_bundle.sh's sequence, tried here: a wheel cut into parts over several calls' groups, joined as the
device would join them, checked, installed into a target folder, and imported from there."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.support.services import REPO_ROOT

SCRIPT = REPO_ROOT / "bench" / "gpu_bundle.sh"


def _wheel(folder: Path, name: str, size: int) -> Path:
    """A real (tiny) wheel of package `name`, padded with `size` bytes of incompressible data."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-1.0-py3-none-any.whl"
    files = {
        f"{name}/__init__.py": f"ANSWER = 42\nPADDING_BYTES = {size}\n".encode(),
        f"{name}/padding.bin": os.urandom(size),
        f"{name}-1.0.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n".encode(),
        f"{name}-1.0.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = []
    for file, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{file},sha256={digest},{len(data)}")
    record.append(f"{name}-1.0.dist-info/RECORD,,")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for file, data in files.items():
            archive.writestr(file, data)
        archive.writestr(f"{name}-1.0.dist-info/RECORD", "\n".join(record) + "\n")
    return path


def test_parts_travel_in_groups_and_join_into_installable_wheels(tmp_path):
    wheels = tmp_path / "given"
    _wheel(wheels, "bundled_one", 300_000)
    _wheel(wheels, "bundled_two", 20_000)
    out = tmp_path / "bundle"
    environment = {**os.environ, "PYTHON": sys.executable}
    made = subprocess.run(
        ["bash", str(SCRIPT), "--out", str(out), "--part-mb", "0.1", "--wheels-from", str(wheels)],
        capture_output=True,
        text=True,
        env=environment,
        cwd=REPO_ROOT,
        timeout=300,
    )
    assert made.returncode == 0, made.stderr
    parts = sorted(out.glob("parts/*/*.part*"))
    assert len([part for part in parts if "bundled_one" in part.name]) == 4  # 300 kB and its zip: 4 parts of 100 kB
    assert all(part.stat().st_size <= 100_000 for part in parts)
    calls = re.findall(r"run\(carry=\[(.*?)\]", made.stdout)
    assert len(calls) == len(list(out.glob("parts/g*"))) >= 1
    assert "join.sh" in calls[-1] and "SHA256SUMS" in calls[-1]
    # The device's side: the joined wheels, checked and installed, import from the target.
    for wheel in out.glob("wheels/*.whl"):
        wheel.unlink()
    target = tmp_path / "site"
    joined = subprocess.run(
        ["bash", str(out / "join.sh")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**environment, "TARGET": str(target)},
    )
    assert joined.returncode == 0, joined.stderr
    assert joined.stdout.strip().endswith(f"PYTHONPATH={target}")
    imported = subprocess.run(
        [sys.executable, "-c", "import bundled_one, bundled_two; print(bundled_one.ANSWER + bundled_two.ANSWER)"],
        capture_output=True,
        text=True,
        env={**environment, "PYTHONPATH": str(target)},
        timeout=60,
    )
    assert imported.stdout.strip() == "84", imported.stderr


def test_a_corrupt_part_is_refused_by_its_sum(tmp_path):
    wheels = tmp_path / "given"
    _wheel(wheels, "bundled_three", 50_000)
    out = tmp_path / "bundle"
    environment = {**os.environ, "PYTHON": sys.executable}
    subprocess.run(
        ["bash", str(SCRIPT), "--out", str(out), "--part-mb", "0.01", "--wheels-from", str(wheels)],
        check=True,
        capture_output=True,
        env=environment,
        cwd=REPO_ROOT,
        timeout=300,
    )
    part = sorted(out.glob("parts/*/*.part*"))[1]
    part.write_bytes(b"x" + part.read_bytes()[1:])
    joined = subprocess.run(
        ["bash", str(out / "join.sh")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**environment, "TARGET": str(tmp_path / "site")},
    )
    assert joined.returncode != 0 and "FAILED" in joined.stdout + joined.stderr
