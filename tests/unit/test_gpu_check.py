"""The GPU check refuses, with what it found, where no GPU is visible (CPU CI never has one)."""

from __future__ import annotations

from benchmarks import gpu_check


def test_without_a_gpu_it_says_what_it_found_and_exits_2(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("CEREBRO_FAKE_GPUS", "")     # the internal hook: no GPU, whatever nvidia-smi says
    assert gpu_check.main(["--out", str(tmp_path / "g.json")]) == 2
    out = capsys.readouterr().out
    assert "no GPU is visible" in out and "CEREBRO_FAKE_GPUS" in out
    assert not (tmp_path / "g.json").exists()


def test_the_workload_is_the_demo_grid_on_tiled_digits():
    assert len(gpu_check._configurations()) == 8
    x, y = gpu_check.make_data(500)
    assert x.shape == (500, 64) and x.dtype == "float32" and set(y) <= set(range(10))
    again, _ = gpu_check.make_data(500)
    assert (x == again).all()     # seeded
