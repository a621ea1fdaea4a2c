"""SDXL LoRAs over HTTP: a LoKr in kohya's SDXL layout is listed with its family and changes the picture (the
merges themselves are checked against independent computations in tests/engines/test_sdxl_lora_merging.py)."""

from __future__ import annotations

from tests.support.services import decided_loras, in_process, mean_abs_diff
from tests.support.services import fetch_pixels as pixels
from tests.support.services import generate as run

PARAMS = {"prompt": "a castle", "width": 64, "height": 64, "num_inference_steps": 3, "seed": 42}


def test_over_http_an_sdxl_lokr_is_listed_and_applied(tmp_path, tiny_sdxl, sdxl_loras):
    with (
        in_process(tmp_path, tiny_sdxl, loras={"dir": str(sdxl_loras)}, model={"dtype": "float32"}) as service,
        service.client() as client,
    ):
        entries = decided_loras(client)  # fits are decided just after the model loads
        assert entries["xl_loha"]["family"] == "sdxl" and entries["xl_loha"]["type"] == "loha"
        assert entries["xl_loha"]["fits"] is True
        plain = run(client, **PARAMS)
        styled = run(client, **PARAMS, loras=[{"name": "xl_lokr", "weight": 1.0}])
        assert styled["status"] == "completed", styled
        assert mean_abs_diff(pixels(plain["result_url"]), pixels(styled["result_url"])) > 1.0
