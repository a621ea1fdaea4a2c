"""The batching benchmark's arithmetic: its percentiles and the table it prints."""

from __future__ import annotations

from bench.batching import percentile, table


def test_nearest_rank_percentiles():
    values = [float(n) for n in range(1, 33)]  # 32 latencies, as the benchmark has
    assert percentile(values, 0.5) == 16.0
    assert percentile(values, 0.99) == 32.0
    assert percentile([3.0], 0.99) == 3.0
    assert percentile([5.0, 1.0, 3.0], 0.5) == 3.0


def test_the_table_compares_each_setting_with_batching_off():
    shape = {"width": 256, "height": 256, "num_inference_steps": 20, "dtype": "float32"}
    rows = [
        {"model": "tiny", "batch_max": 1, "images_per_second": 1.0, "p50_seconds": 20.0, "p99_seconds": 30.0, **shape},
        {"model": "tiny", "batch_max": 4, "images_per_second": 2.5, "p50_seconds": 9.0, "p99_seconds": 12.5, **shape},
    ]
    lines = table(rows).splitlines()
    assert lines[0].startswith("| model | request | batch_max |")
    assert lines[2] == "| tiny | 256x256, 20 steps, float32 | 1 | 1 | 1.00x | 20.0 s | 30.0 s |"
    assert lines[3] == "| tiny | 256x256, 20 steps, float32 | 4 | 2.5 | 2.50x | 9.0 s | 12.5 s |"
