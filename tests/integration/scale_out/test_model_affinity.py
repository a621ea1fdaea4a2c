"""Model affinity on the multi-worker PostgreSQL setup: workers prefer tasks for the model they have loaded, so a
queue that alternates between two models costs a few model loads instead of one per task."""

from __future__ import annotations

import pytest

from tests.support.affinity import mixed_queue_loads

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

TASKS = 16


def test_affinity_saves_model_loads_on_a_mixed_queue(tmp_path, tiny_model, tiny_sdxl, postgres):
    models = {"base": tiny_model, "xl": tiny_sdxl}
    with_affinity = mixed_queue_loads(tmp_path / "on", models, postgres.new_database(), TASKS, affinity_max_wait=600)
    without = mixed_queue_loads(tmp_path / "off", models, postgres.new_database(), TASKS, affinity_max_wait=0)
    # Two start-up loads, then about one switch per worker when a model's tasks run out.
    assert with_affinity <= 6, with_affinity
    assert without >= TASKS // 2, without
