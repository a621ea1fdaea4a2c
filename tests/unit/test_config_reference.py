"""The configuration reference (docs/configuration.md) is the config code's: generated from the Structs, it matches
the page, every field has a comment that says what it means, and every key the shipped config.yaml and the
deployment configs set is in it."""

from __future__ import annotations

from pathlib import Path

import yaml

from sdapi.config_reference import PAGE, keys, reference

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ("config.yaml", "deploy/config.compose.yaml", "deploy/kubernetes/config.yaml")


def _paths(mapping: dict, prefix: str = "") -> set[str]:
    """The keys a config sets, as dotted paths: a section's keys (not the section), a list's items' as `key[].`."""
    found = set()
    for key, value in mapping.items():
        path = prefix + key
        if isinstance(value, dict):
            found |= _paths(value, path + ".")
            continue
        found.add(path)
        for item in value if isinstance(value, list) else []:
            if isinstance(item, dict):
                found |= _paths(item, path + "[].")
    return found


def test_the_page_holds_the_reference_the_code_gives():
    assert reference() in PAGE.read_text(encoding="utf-8"), "run `python -m sdapi.config_reference`"


def test_every_field_says_what_it_means():
    assert [key.path for key in keys() if not key.meaning] == []


def test_every_key_the_shipped_configs_set_is_documented():
    documented = {key.path for key in keys()}
    for name in CONFIGS:
        raw = yaml.safe_load((REPO_ROOT / name).read_text(encoding="utf-8"))
        # A list's items are documented under `key[]`; a list of plain values under its own key.
        undocumented = {path for path in _paths(raw) if path not in documented}
        assert undocumented == set(), (name, undocumented)
