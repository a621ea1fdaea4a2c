"""Every add-on kind is listed and refreshed by the one generic controller, under its own URL and list key."""

from __future__ import annotations

from sdapi.addons import ADDON_KINDS, LIBRARIES
from sdapi.api.routes import ADDON_CONTROLLERS


def test_one_controller_factory_serves_every_kind():
    names = ["loras", "embeddings", "upscalers", "controlnets", "ip-adapters", "vaes"]
    assert [kind.name for kind in ADDON_KINDS] == names
    assert len(ADDON_CONTROLLERS) == len(LIBRARIES) == 6
    handlers = {controller.list_entries.fn.__qualname__ for controller in ADDON_CONTROLLERS}
    assert handlers == {"addon_controller.<locals>.list_entries"}


def test_each_kind_lists_and_refreshes_under_its_key(client):
    for kind in ADDON_KINDS:
        listed = client.get(f"/api/v1/{kind.name}")
        assert listed.status_code == 200, listed.text
        assert list(listed.json()) == [kind.list_key] and isinstance(listed.json()[kind.list_key], list)
        refreshed = client.post(f"/api/v1/{kind.name}/refresh")
        assert refreshed.status_code == 200 and refreshed.json() == listed.json()
    assert client.get("/api/v1/ip-adapters", headers={"X-API-Key": "wrong"}).status_code == 401
