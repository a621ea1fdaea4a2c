"""Record what the pinned CUDA wheels require (their Requires-Dist lines that name CUDA), for the container test.

The GPU image's base must carry the CUDA major the pinned torch and onnxruntime-gpu wheels were built for. The test
reads the record this writes instead of asking the package index, so no test needs the network; a pin that changes
without a new record fails that test, which names this command:

    .venv/bin/python deploy/record_gpu_wheels.py
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECORD = ROOT / "deploy" / "gpu-wheels.json"
# The requirements that say which CUDA a wheel was built against.
CUDA_REQUIREMENT = re.compile(r"^(?:cuda-toolkit|nvidia-cuda-runtime|nvidia-cuda-runtime-cu\d+|nvidia-cudnn-cu\d+)")


def gpu_pins() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    torch_pin = next(pin for pin in project["dependencies"] if pin.startswith("torch=="))
    return [torch_pin, *project["optional-dependencies"]["gpu"]]


def main() -> None:
    pins = gpu_pins()
    with tempfile.TemporaryDirectory() as folder:
        report_path = Path(folder) / "report.json"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--dry-run",
                "--quiet",
                "--ignore-installed",
                "--no-deps",
                "--only-binary=:all:",
                "--platform",
                "manylinux_2_28_x86_64",
                "--python-version",
                "3.12",
                "--report",
                str(report_path),
                *pins,
            ],
            check=True,
            timeout=600,
        )
        report = json.loads(report_path.read_text(encoding="utf-8"))
    by_name = {item["metadata"]["name"].lower(): item["metadata"] for item in report["install"]}
    record = {}
    for pin in pins:
        metadata = by_name[pin.split("==")[0].lower()]
        cuda = [line for line in metadata.get("requires_dist", []) if CUDA_REQUIREMENT.match(line)]
        record[pin] = {"requires_dist": cuda}
    RECORD.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {RECORD.relative_to(ROOT)} for {', '.join(pins)}")


if __name__ == "__main__":
    main()
