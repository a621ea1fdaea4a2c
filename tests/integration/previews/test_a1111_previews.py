"""A1111's live previews with the real `webuiapi` client: /progress answers current_image while a task runs; the
preview options are read and written through /options, per API key; /skip ends the current image early."""

from __future__ import annotations

import base64
import io
import threading
from typing import Any

import numpy as np
import pytest
import webuiapi
from PIL import Image

from tests.support.services import API_KEY, REPO_ROOT
from tests.support.waiting import eventually

MODEL = REPO_ROOT / "models" / "scenes-sd"
OTHER_KEY = "sk-previews-other"
# Long enough on the trained model that a preview shows up well before the end on any machine.
LONG = {"prompt": "a lake and green mountains", "width": 256, "height": 256, "steps": 120, "seed": 9}


@pytest.fixture(scope="module")
def service(make_service):
    keys = [{"key": API_KEY, "name": "main"}, {"key": OTHER_KEY, "name": "other"}]
    return make_service("a1111-previews", model_path=MODEL, api={"keys": keys})


def _client(service, key: str = API_KEY) -> webuiapi.WebUIApi:
    host, port = service.url.removeprefix("http://").split(":")
    return webuiapi.WebUIApi(host=host, port=int(port), username="anyone", password=key)


class Background:
    """A txt2img call on its own thread (webuiapi's call blocks until the images come back)."""

    def __init__(self, api: webuiapi.WebUIApi, **body: Any) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(api, body), daemon=True)
        self._thread.start()

    def _run(self, api: webuiapi.WebUIApi, body: dict[str, Any]) -> None:
        try:
            self.result = api.txt2img(**body)
        except BaseException as error:  # reported by join()
            self.error = error

    def join(self) -> Any:
        self._thread.join(timeout=600)
        assert not self._thread.is_alive() and self.error is None, self.error
        return self.result


def test_progress_carries_the_current_image_while_a_task_runs(service):
    api = _client(service)
    running = Background(api, **LONG)
    shown: list[dict[str, Any]] = []

    def current_image() -> bool:
        answer = api.get_progress()
        if answer.get("current_image"):
            shown.append(answer)
        return bool(shown)

    eventually(current_image, timeout=300, what="a current_image in /progress")
    picture = Image.open(io.BytesIO(base64.b64decode(shown[0]["current_image"])))
    assert picture.format == "PNG" and picture.size == (256, 256)  # A1111's default live preview format
    assert 0 < shown[0]["state"]["sampling_step"] <= shown[0]["state"]["sampling_steps"]
    skipped = api.session.get(f"{api.baseurl}/progress", params={"skip_current_image": "true"}).json()
    assert skipped["current_image"] is None
    assert len(running.join().images) == 1
    assert api.get_progress()["current_image"] is None  # nothing runs


def test_the_preview_options_are_read_and_written_per_api_key(service):
    api, other = _client(service), _client(service, OTHER_KEY)
    options = api.get_options()
    assert options["live_previews_enable"] is True and options["show_progress_every_n_steps"] == 5
    assert options["show_progress_type"] == "Approx cheap" and options["live_preview_content"] == "Combined"
    api.set_options(
        {"show_progress_every_n_steps": 3, "live_previews_image_format": "jpeg", "show_progress_type": "TAESD"}
    )
    changed = api.get_options()
    assert changed["show_progress_every_n_steps"] == 3 and changed["live_previews_image_format"] == "jpeg"
    assert changed["show_progress_type"] == "TAESD"
    assert other.get_options()["show_progress_every_n_steps"] == 5  # another key's options are its own
    refused = api.session.post(f"{api.baseurl}/options", json={"show_progress_type": "Pretty"})
    assert refused.status_code == 422 and "show_progress_type" in refused.text
    running = Background(api, **LONG)
    shown: list[str] = []
    eventually(lambda: bool(shown.append(api.get_progress()["current_image"]) or shown[-1]), timeout=300)
    assert Image.open(io.BytesIO(base64.b64decode(shown[-1]))).format == "JPEG"
    running.join()
    api.set_options({"live_previews_enable": False, "samples_format": "webp"})
    off = Background(api, **{**LONG, "steps": 60})
    answers = []
    while off._thread.is_alive():
        answers.append(api.get_progress())
        off._thread.join(timeout=0.1)
    result = off.join()
    assert all(answer["current_image"] is None for answer in answers)
    raw = base64.b64decode(result.json["images"][0])
    assert Image.open(io.BytesIO(raw)).format == "WEBP"  # samples_format written through /options
    api.set_options({"live_previews_enable": True, "samples_format": "png", "live_previews_image_format": "png"})


def test_skip_ends_the_current_image_early_and_the_task_completes(service):
    api = _client(service)
    assert api.skip() == {"skipped": []}  # nothing runs
    body = {**LONG, "steps": 150}
    full = api.txt2img(**body).image
    running = Background(api, **body)
    eventually(lambda: api.get_progress()["state"]["sampling_step"] >= 5, timeout=300, what="sampling under way")
    assert len(api.skip()["skipped"]) == 1
    skipped = running.join().image
    # The same request and seed, ended early: a picture of its size, not the full run's.
    assert skipped.size == full.size == (256, 256)
    assert not np.array_equal(np.asarray(skipped), np.asarray(full))
