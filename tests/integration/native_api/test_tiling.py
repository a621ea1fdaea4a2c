"""Seamless tiling over HTTP on the trained default model (issue 47, item 3): a tiled picture's opposite edges
match as well as two neighbouring columns inside it (and rows for y), an untiled one's do not; one axis alone wraps
that axis alone; A1111's `tiling` through the real `webuiapi` client does the same."""

from __future__ import annotations

import numpy as np
import pytest
import webuiapi

from tests.support.services import API_KEY, REPO_ROOT, fetch_image, generate

MODEL = REPO_ROOT / "models" / "scenes-sd"
TASK = {"prompt": "a lake and green mountains", "width": 256, "height": 256, "num_inference_steps": 20, "seed": 1}


@pytest.fixture(scope="module")
def service(make_service):
    return make_service("tiling", model_path=MODEL)


def _seams(picture) -> dict[str, tuple[float, float]]:
    """Per axis: (the mean difference across the seam, the mean difference between neighbours inside)."""
    pixels = np.asarray(picture.convert("RGB"), dtype=float)
    return {
        "x": (np.abs(pixels[:, 0] - pixels[:, -1]).mean(), np.abs(np.diff(pixels, axis=1)).mean()),
        "y": (np.abs(pixels[0] - pixels[-1]).mean(), np.abs(np.diff(pixels, axis=0)).mean()),
    }


def _seamless(seam: tuple[float, float]) -> bool:
    across, inside = seam
    return across <= 2 * inside + 0.5


def _tiled(service, **fields):
    with service.client() as client:
        task = generate(client, **{**TASK, **fields})
    assert task["status"] == "completed", task
    return fetch_image(task["result_url"])


def test_a_tiled_picture_continues_across_its_edges(service):
    plain, both = _seams(_tiled(service)), _seams(_tiled(service, tiling=True))
    assert _seamless(both["x"]) and _seamless(both["y"]), both
    assert not _seamless(plain["x"]) and not _seamless(plain["y"]), plain
    across = _seams(_tiled(service, tiling="x"))
    assert _seamless(across["x"]) and not _seamless(across["y"]), across


def test_a1111s_tiling_and_its_infotext(service):
    host, port = service.url.removeprefix("http://").split(":")
    api = webuiapi.WebUIApi(host=host, port=int(port), username="anyone", password=API_KEY)
    result = api.txt2img(prompt=TASK["prompt"], width=256, height=256, steps=20, seed=1, tiling=True)
    seams = _seams(result.image)
    assert _seamless(seams["x"]) and _seamless(seams["y"]), seams
    assert "Tiling: True" in result.info["infotexts"][0]
    with service.client() as client:
        refused = client.post("/api/v1/generate", json={"prompt": "x", "tiling": "z"})
        assert refused.status_code == 422 and "tiling" in refused.text
