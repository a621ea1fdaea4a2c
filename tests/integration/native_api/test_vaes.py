"""VAEs as an add-on kind (issue 47, item 6): vae.dir's folders and single files listed with their latent width,
a request's `vae` changing the picture (the same weights as a folder or a file give the same picture), pinned by
sha256 and recorded, a VAE of other latents refused, and A1111's sd_vae (per request, as the key's option) with
/sdapi/v1/sd-vae, through the real `webuiapi` client."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import webuiapi

from sdapi.media.provenance import read_embedded
from tests.support.services import API_KEY, fetch_pixels, generate
from tests.support.vae_files import write_vae_file, write_vae_folder

BODY = {"prompt": "a lighthouse", "width": 64, "height": 64, "num_inference_steps": 3, "seed": 4}


@pytest.fixture(scope="module")
def service(make_service, tmp_path_factory, tiny_model):
    folder = tmp_path_factory.mktemp("vaes")
    write_vae_folder(tiny_model, folder / "warm-vae", seed=11)
    write_vae_file(tiny_model, folder / "warm-vae-file.safetensors", seed=11)
    write_vae_folder(tiny_model, folder / "wide-vae", seed=12, latent_channels=16)
    (folder / "broken.safetensors").write_bytes(b"not a safetensors file")
    return make_service("vaes", vae={"dir": str(folder)}, model={"dtype": "float32"})


def test_the_list_shows_each_vae_with_its_latents_and_problems(service):
    with service.client() as client:
        listed = {entry["name"]: entry for entry in client.get("/api/v1/vaes").json()["vaes"]}
    assert set(listed) == {"warm-vae", "warm-vae-file", "wide-vae", "broken"}
    assert listed["warm-vae"]["latent_channels"] == 4 and listed["warm-vae"]["layout"] == "folder"
    assert listed["warm-vae-file"]["layout"] == "single-file" and listed["warm-vae-file"]["error"] is None
    assert listed["wide-vae"]["latent_channels"] == 16 and listed["broken"]["error"]


def test_a_vae_changes_the_picture_and_is_recorded(service):
    with service.client() as client:
        own = generate(client, **BODY)
        folder = generate(client, **BODY, vae="warm-vae")
        single = generate(client, **BODY, vae="warm-vae-file")
        again = generate(client, **BODY)
        for task in (own, folder, single, again):
            assert task["status"] == "completed", task
        assert not np.array_equal(fetch_pixels(own["result_url"]), fetch_pixels(folder["result_url"]))
        assert np.array_equal(fetch_pixels(folder["result_url"]), fetch_pixels(single["result_url"]))
        assert np.array_equal(fetch_pixels(own["result_url"]), fetch_pixels(again["result_url"]))  # nothing stays
        infotext, _ = read_embedded(httpx.get(folder["result_url"]).content)
        assert infotext is not None and "VAE: warm-vae" in infotext and "VAE hash: " in infotext
        for name, words in (("wide-vae", "16"), ("broken", "不可用"), ("missing", "warm-vae")):
            refused = client.post("/api/v1/generate", json={**BODY, "vae": name})
            assert refused.status_code == 400 and words in refused.json()["detail"], refused.text


def test_a1111s_sd_vae(service):
    host, port = service.url.removeprefix("http://").split(":")
    api = webuiapi.WebUIApi(host=host, port=int(port), username="anyone", password=API_KEY)
    listed = [entry["model_name"] for entry in api.session.get(f"{api.baseurl}/sd-vae").json()]
    assert sorted(listed) == ["warm-vae", "warm-vae-file", "wide-vae"]
    fields = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 3, "seed": 4, "sampler_name": "Euler"}
    own = api.txt2img(**fields)
    chosen = api.txt2img(**fields, override_settings={"sd_vae": "warm-vae.safetensors"})
    assert "VAE: warm-vae" in chosen.info["infotexts"][0]
    assert not np.array_equal(np.asarray(own.image), np.asarray(chosen.image))
    api.set_options({"sd_vae": "warm-vae"})
    try:
        assert api.get_options()["sd_vae"] == "warm-vae"
        by_option = api.txt2img(**fields)
        assert np.array_equal(np.asarray(by_option.image), np.asarray(chosen.image))
    finally:
        api.set_options({"sd_vae": "Automatic"})
    refused = api.session.post(f"{api.baseurl}/txt2img", json={**fields, "override_settings": {"sd_vae": "nope"}})
    assert refused.status_code == 422 and "nope" in refused.text


def test_vae_tiling_over_http_is_recorded(service):
    """Issue 48, in part: vae_tiling per request, recorded ("Tiled VAE: True" in the infotext)."""
    with service.client() as client:
        tiled = generate(client, **BODY, vae_tiling=True)
        plain = generate(client, **BODY)
        assert tiled["status"] == plain["status"] == "completed"
        infotext, record = read_embedded(httpx.get(tiled["result_url"]).content)
        assert infotext is not None and "Tiled VAE: True" in infotext
        assert record is not None and '"vae_tiling":true' in record.replace(" ", "")
        plain_text, _ = read_embedded(httpx.get(plain["result_url"]).content)
        assert plain_text is not None and "Tiled VAE" not in plain_text
