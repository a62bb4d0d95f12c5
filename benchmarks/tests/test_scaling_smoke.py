"""Smoke run of benchmarks.scaling on tiny data: every system at every point, values not timings."""

from __future__ import annotations

import json

from benchmarks import run, scaling


def test_scaling_runs_every_system_at_every_point(tmp_path):
    systems = [s for s in scaling.SYSTEMS if not run.availability(2).get(s)]
    assert "mop" in systems and "ray-tune" in systems, run.availability(2)
    report = scaling.run_scaling(systems, configs=(4, 8), rows=(1000, 2000), workers=2, out_dir=tmp_path,
                                 timeout=600)
    assert not report["errors"], report["errors"]
    for system in systems:
        pts = {(p["configs"], p["rows"]): p for p in report["points"][system]}
        assert set(pts) == {(4, 1000), (8, 1000), (4, 2000)}
        assert all(p["span_s"] > 0 and p["peak_rss_bytes"] > 100e6 for p in pts.values())
        s = report["slopes"][system]
        assert s["time_exponent_configs"] is not None and s["s_per_config"] is not None
    saved = json.loads((tmp_path / "scaling.json").read_text())
    assert saved["slopes"].keys() == report["slopes"].keys()
    assert (tmp_path / "scaling.png").stat().st_size > 10_000
    assert "| mop |" in scaling.markdown(report)
