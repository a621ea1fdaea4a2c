"""The OpenAPI document says what the service does: schemathesis runs every one of its checks against the running
service's /openapi.json (all 31 operations, the native API and both dialects: documented statuses, bodies,
content types, Allow headers, authentication, schema-valid data accepted, schema-invalid data refused, stateful
links). Its settings, and the reason for every case where a check is widened or left out, are in schemathesis.toml
beside this file.

Bounded: a fixed seed and a fixed number of examples per operation (about half a minute on an idle 2-core
machine), so a failure here reproduces with the command it prints."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support.services import API_KEY, InProcessService

pytestmark = pytest.mark.slow

CONFIG = Path(__file__).with_name("schemathesis.toml")
SCHEMATHESIS = Path(sys.executable).with_name("st")
EXAMPLES_PER_OPERATION = 20
SEED = 1


def test_the_service_conforms_to_its_openapi_document(
    make_service: Callable[..., InProcessService], tmp_path: Path
) -> None:
    # Small limits: schema-valid requests that fit generate 64x64 images in a few steps; the rest are refused.
    service = make_service(
        "schemathesis",
        defaults={"width": 64, "height": 64, "num_inference_steps": 2},
        limits={"max_width": 128, "max_height": 128, "max_inference_steps": 4},
    )
    command = [
        str(SCHEMATHESIS),
        "--config-file",
        str(CONFIG),
        "run",
        f"{service.url}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(EXAMPLES_PER_OPERATION),
        "--seed",
        str(SEED),
        "--workers",
        "1",
        "--request-timeout",
        "60",
        "--generation-database",
        "none",
        "--no-color",
    ]
    result = subprocess.run(
        command,
        cwd=tmp_path,
        env={**os.environ, "SDAPI_SCHEMATHESIS_KEY": API_KEY},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, f"schemathesis found failures:\n{result.stdout[-20000:]}\n{result.stderr[-2000:]}"
    # Every operation was tested: none fell out of the document, and the document has them all.
    selected = re.search(r"Selected: (\d+)/(\d+)\s+Tested: (\d+)", result.stdout)
    assert selected is not None, result.stdout[-3000:]
    chosen, total, tested = (int(group) for group in selected.groups())
    document = httpx.get(f"{service.url}/openapi.json", timeout=30).json()
    operations = sum(len(methods) for methods in document["paths"].values())
    assert chosen == total == tested == operations, (selected.group(0), operations)
