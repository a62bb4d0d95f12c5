"""The arithmetic of benchmarks/scaling.py and the larger grids it uses: pure."""

from __future__ import annotations

import pytest

from benchmarks import scaling, workload


def test_points_vary_one_axis_at_a_time():
    assert scaling.points((8, 16, 32), (25000, 50000, 100000)) == [
        (8, 25000), (16, 25000), (32, 25000), (8, 50000), (8, 100000)]


def test_power_and_line_fits():
    assert scaling.fit_power([8, 16, 32], [4.0, 8.0, 16.0]) == pytest.approx(1.0)
    assert scaling.fit_power([8, 16, 32], [4.0, 4.0, 4.0]) == pytest.approx(0.0)
    assert scaling.fit_power([8, 16, 32], [2.0, 8.0, 32.0]) == pytest.approx(2.0)
    assert scaling.fit_line([8, 16, 32], [5.0, 9.0, 17.0]) == pytest.approx(0.5)
    assert scaling.fit_power([8], [1.0]) is None and scaling.fit_line([8, 16], [None, 1.0]) is None


def test_slopes_of_one_system():
    pts = {(8, 25000): {"span_s": 4.0, "peak_rss_bytes": 2.0e9}, (16, 25000): {"span_s": 8.0, "peak_rss_bytes": 2.1e9},
           (32, 25000): {"span_s": 16.0, "peak_rss_bytes": 2.3e9}, (8, 50000): {"span_s": 8.0, "peak_rss_bytes": 2.05e9},
           (8, 100000): {"span_s": 16.0, "peak_rss_bytes": 2.15e9}}
    s = scaling.slopes(pts, (8, 16, 32), (25000, 50000, 100000), 25000)
    assert s["time_exponent_configs"] == pytest.approx(1.0) and s["time_exponent_rows"] == pytest.approx(1.0)
    assert s["s_per_config"] == pytest.approx(0.5) and s["s_per_10k_rows"] == pytest.approx(1.6)
    assert s["memory_mb_per_config"] == pytest.approx(12.5, rel=0.05)
    assert s["memory_mb_per_10k_rows"] == pytest.approx(20.0)  # 150 MB over 75k rows


def test_larger_grids_keep_the_default_eight_first_in_seed_order():
    eight = workload.configurations()
    assert len(eight) == 8 and [workload.config_index(c) for c in eight] == list(range(8))
    for n in (4, 16, 32):
        grid = workload.configurations(n)
        assert len(grid) == n and len({tuple(sorted(c.items())) for c in grid}) == n
    assert sorted(workload.config_index(c) for c in workload.configurations(32)) == list(range(32))
    with pytest.raises(ValueError, match="4 x"):
        workload.configurations(10)
