"""GPU placement for LocalBackend workers: discovery, the mapping rule and its refusals (no GPU needed)."""

from __future__ import annotations

import stat

import numpy as np
import pytest

from cerebro import LocalBackend
from cerebro.backends import devices
from cerebro.backends.devices import (GpuDiscovery, device_label, discover_gpus, worker_devices, worker_device,
                                      worker_env)


# ------------------------------------------------------------------ the mapping rule

def test_cpu_workers_default_to_two_and_get_no_gpu():
    assert worker_devices(None, 1, None, ()) == [(), ()]
    assert worker_devices(None, 1, 3, (0, 1)) == [(), (), ()]


def test_all_selects_every_visible_gpu_one_worker_each_by_default():
    assert worker_devices("all", 1, None, (0, 1, 2, 3)) == [(0,), (1,), (2,), (3,)]


def test_an_int_selects_the_first_n_visible_gpus():
    assert worker_devices(2, 1, None, (1, 3, 5)) == [(1,), (3,)]
    assert worker_devices(np.int64(1), 1, None, (4,)) == [(4,)]


def test_a_list_selects_those_physical_ids_in_its_order():
    assert worker_devices([3, 1], 1, None, (0, 1, 2, 3)) == [(3,), (1,)]
    assert worker_devices((2,), 1, None, (0, 1, 2, 3)) == [(2,)]


def test_workers_per_gpu_puts_workers_round_robin_over_the_gpus():
    assert worker_devices([1, 3], 2, None, (0, 1, 2, 3)) == [(1,), (3,), (1,), (3,)]
    assert worker_devices("all", 3, None, (0, 1)) == [(0,), (1,), (0,), (1,), (0,), (1,)]


def test_fewer_workers_than_the_gpus_allow_are_spread_round_robin():
    assert worker_devices("all", 2, 3, (0, 1)) == [(0,), (1,), (0,)]
    assert worker_devices("all", 1, 1, (0, 1, 2)) == [(0,)]  # the last GPUs stay unused


def test_more_workers_than_gpus_times_workers_per_gpu_is_refused_naming_the_limit():
    with pytest.raises(ValueError, match=r"'num_workers' parameter of LocalBackend must be None or an int in \[1, 2\] "
                                         r"\(2 GPUs x workers_per_gpu=1; raise workers_per_gpu"):
        worker_devices("all", 1, 3, (0, 1))
    with pytest.raises(ValueError, match=r"'num_workers'.*int in \[1, 4\].*Got 5 instead"):
        worker_devices([0, 1], 2, 5, (0, 1))
    with pytest.raises(ValueError, match=r"'num_workers'.*Got 0 instead"):
        worker_devices("all", 1, 0, (0, 1))


def test_workers_per_gpu_must_be_an_int_at_least_one_and_one_on_cpu():
    with pytest.raises(ValueError, match=r"'workers_per_gpu' parameter of LocalBackend must be an int >= 1. Got 0"):
        worker_devices("all", 0, None, (0,))
    with pytest.raises(ValueError, match=r"'workers_per_gpu'.*Got 1.5"):
        worker_devices("all", 1.5, None, (0,))
    with pytest.raises(ValueError, match=r"'workers_per_gpu'.*Got True"):
        worker_devices("all", True, None, (0,))
    with pytest.raises(ValueError, match=r"'workers_per_gpu' parameter of LocalBackend must be 1 when gpus=None"):
        worker_devices(None, 2, None, ())


@pytest.mark.parametrize("gpus, message", [
    ("some", r"'gpus' parameter of LocalBackend must be None, 'all', an int >= 1 or a list of GPU ids. Got 'some'"),
    (0, r"'gpus'.*an int >= 1.*Got 0 instead"),
    (-1, r"'gpus'.*Got -1 instead"),
    ([], r"'gpus'.*a non-empty list of GPU ids \(ints >= 0\). Got \[\]"),
    ([0, "1"], r"'gpus'.*a non-empty list of GPU ids.*Got \[0, '1'\]"),
    ([0, -1], r"'gpus'.*Got \[0, -1\]"),
    ([True], r"'gpus'.*Got \[True\]"),
    ([1, 1], r"'gpus'.*a list of distinct GPU ids. Got \[1, 1\]"),
])
def test_bad_gpus_values_are_refused_naming_the_argument(gpus, message):
    with pytest.raises(ValueError, match=message):
        worker_devices(gpus, 1, None, (0, 1))


@pytest.mark.parametrize("gpus", [1.0, True, {0: 1}, "0,1".encode()])
def test_gpus_of_the_wrong_type_is_a_type_error(gpus):
    with pytest.raises(TypeError, match=r"'gpus' parameter of LocalBackend must be None, 'all', an int"):
        worker_devices(gpus, 1, None, (0, 1))


@pytest.mark.parametrize("gpus", ["all", 1, [0]])
def test_asking_for_gpus_with_none_visible_is_refused_saying_what_was_looked_at(gpus):
    found = GpuDiscovery((), (), "nvidia-smi", None)
    with pytest.raises(ValueError, match=r"asks for GPUs, but no GPU is visible "
                                         r"\(nvidia-smi found none; CUDA_VISIBLE_DEVICES is not set\)"):
        worker_devices(gpus, 1, None, found)
    hidden = GpuDiscovery((), (0, 1), "nvidia-smi", "")
    with pytest.raises(ValueError, match=r"no GPU is visible \(nvidia-smi found 0, 1; CUDA_VISIBLE_DEVICES=''\)"):
        worker_devices(gpus, 1, None, hidden)


def test_an_unknown_gpu_id_is_refused_listing_the_visible_ones():
    found = GpuDiscovery((0, 1), (0, 1, 2), "nvidia-smi", "0,1")
    with pytest.raises(ValueError, match=r"GPU 5 does not exist or is hidden; visible: 0, 1 "
                                         r"\(nvidia-smi found 0, 1, 2; CUDA_VISIBLE_DEVICES='0,1'\)"):
        worker_devices([0, 5], 1, None, found)
    with pytest.raises(ValueError, match=r"GPU 2 does not exist or is hidden; visible: 0, 1"):
        worker_devices([2], 1, None, found)


def test_more_gpus_than_visible_is_refused():
    with pytest.raises(ValueError, match=r"asks for 3 GPUs, but only 2 are visible: 0, 1"):
        worker_devices(3, 1, None, (0, 1))
    with pytest.raises(ValueError, match=r"asks for 2 GPUs, but only 1 is visible: 7"):
        worker_devices(2, 1, None, (7,))


# ------------------------------------------------------------------ labels and the worker's environment

def test_device_labels():
    assert device_label(()) == "cpu"
    assert device_label((3,)) == "cuda:3"
    assert device_label((1, 3)) == "cuda:1,3"


def test_a_gpu_worker_sees_only_its_gpu_and_a_cpu_worker_keeps_the_environment():
    assert worker_env((3,)) == {"CUDA_VISIBLE_DEVICES": "3", "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CEREBRO_DEVICE": "cuda:3"}
    assert worker_env(()) == {"CEREBRO_DEVICE": "cpu", "CUDA_VISIBLE_DEVICES": ""}   # a CPU worker sees no GPU


def test_worker_device_reads_the_label_the_backend_set(monkeypatch):
    monkeypatch.setenv("CEREBRO_DEVICE", "cuda:2")
    assert worker_device() == "cuda:2"
    monkeypatch.delenv("CEREBRO_DEVICE")
    assert worker_device() == "cpu"


# ------------------------------------------------------------------ discovery

def test_the_fake_list_replaces_discovery():
    d = discover_gpus({"CEREBRO_FAKE_GPUS": "0, 1,2,3"})
    assert d.visible == (0, 1, 2, 3) and d.source == "CEREBRO_FAKE_GPUS"
    assert discover_gpus({"CEREBRO_FAKE_GPUS": ""}).visible == ()


@pytest.mark.parametrize("cvd, visible", [
    ("1,3", (1, 3)),
    ("3,1", (3, 1)),
    ("", ()),
    ("-1", ()),
    ("2,7,3", (2,)),       # CUDA reads the list up to its first entry that names no GPU
    ("1,1,2", (1, 2)),
    ("GPU-bbbb", (1,)),    # a UUID (or a unique prefix of one) names the GPU it identifies
    ("0,GPU-dd", (0, 3)),
    ("GPU-", ()),          # an ambiguous prefix names no GPU
    ("MIG-1234", ()),      # a MIG instance is no whole GPU: nothing visible, no crash
])
def test_the_drivers_cuda_visible_devices_restricts_discovery(monkeypatch, cvd, visible):
    monkeypatch.setattr(devices, "_nvidia_smi", lambda: [(0, "GPU-aaaa"), (1, "GPU-bbbb"), (2, "GPU-cccc"), (3, "GPU-dddd")])
    d = discover_gpus({"CUDA_VISIBLE_DEVICES": cvd})
    assert d.visible == visible
    assert d.found == (0, 1, 2, 3) and d.cuda_visible_devices == cvd


def test_the_drivers_cuda_visible_devices_restricts_the_fake_list_too():
    fake = {"CEREBRO_FAKE_GPUS": "0,1,2,3"}
    assert discover_gpus({**fake, "CUDA_VISIBLE_DEVICES": "3,1"}).visible == (3, 1)
    assert discover_gpus({**fake, "CUDA_VISIBLE_DEVICES": "0,GPU-dd"}).visible == (0,)  # fake GPUs have no UUID


def _fake_nvidia_smi(tmp_path, body: str) -> str:
    exe = tmp_path / "nvidia-smi"
    exe.write_text("#!/bin/sh\n" + body + "\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return str(tmp_path)


def test_discovery_without_nvidia_smi_finds_no_gpu(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no nvidia-smi
    assert devices._nvidia_smi() == []
    d = discover_gpus({})
    assert d.visible == () and d.describe() == "nvidia-smi found none; CUDA_VISIBLE_DEVICES is not set"


def test_discovery_reads_nvidia_smi_and_ignores_its_failures(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", _fake_nvidia_smi(tmp_path, 'echo "0, GPU-aaaa"; echo "1, GPU-bbbb"'))
    assert devices._nvidia_smi() == [(0, "GPU-aaaa"), (1, "GPU-bbbb")]
    assert discover_gpus({}).visible == (0, 1)
    assert discover_gpus({"CUDA_VISIBLE_DEVICES": "GPU-b"}).visible == (1,)
    monkeypatch.setenv("PATH", _fake_nvidia_smi(tmp_path, 'echo "NVIDIA-SMI has failed" >&2; exit 9'))
    assert devices._nvidia_smi() == []


# ------------------------------------------------------------------ LocalBackend's construction

def test_local_backend_places_workers_from_the_discovered_gpus(monkeypatch):
    monkeypatch.setenv("CEREBRO_FAKE_GPUS", "0,1,2,3")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    b = LocalBackend(gpus=[1, 3], workers_per_gpu=2)
    assert b.num_workers == 4 and b.gpus == (1, 3)
    assert [b.worker_device(w) for w in range(4)] == ["cuda:1", "cuda:3", "cuda:1", "cuda:3"]
    assert repr(b) == "LocalBackend(num_workers=4, gpus=[1, 3], workers_per_gpu=2)"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert LocalBackend(gpus="all").gpus == (2, 3)
    with pytest.raises(ValueError, match=r"GPU 1 does not exist or is hidden; visible: 2, 3 "
                                         r"\(CEREBRO_FAKE_GPUS found 0, 1, 2, 3; CUDA_VISIBLE_DEVICES='2,3'\)"):
        LocalBackend(gpus=[1])


def test_local_backend_on_cpu_is_unchanged(monkeypatch):
    monkeypatch.setenv("CEREBRO_FAKE_GPUS", "")  # discovery is not even asked on CPU
    b = LocalBackend()
    assert b.num_workers == 2 and b.gpus is None and b.worker_device(1) == "cpu"
    assert repr(b) == "LocalBackend(num_workers=2)"
    assert LocalBackend(3).num_workers == 3
    with pytest.raises(ValueError, match=r"'num_workers' parameter of LocalBackend must be an int >= 1. Got 0"):
        LocalBackend(0)


def test_local_backend_refuses_gpus_when_none_is_visible(monkeypatch):
    monkeypatch.setenv("CEREBRO_FAKE_GPUS", "")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.raises(ValueError, match=r"LocalBackend\(gpus='all'\) asks for GPUs, but no GPU is visible "
                                         r"\(CEREBRO_FAKE_GPUS found none; CUDA_VISIBLE_DEVICES is not set\)"):
        LocalBackend(gpus="all")


def test_discovery_defaults_to_this_process_environment(monkeypatch):
    monkeypatch.setenv("CEREBRO_FAKE_GPUS", "5")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    assert discover_gpus().visible == (5,)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4")
    assert discover_gpus().visible == ()
