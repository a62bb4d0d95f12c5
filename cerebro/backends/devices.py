"""Which GPU(s) each :class:`~cerebro.backends.local.LocalBackend` worker gets.  No framework import.

Discovery (:func:`discover_gpus`) asks ``nvidia-smi --query-gpu=index,uuid --format=csv,noheader``
(absent or failing: no GPU) and never imports TensorFlow or torch in the driver.  The ids are
*physical* ids, as ``nvidia-smi`` numbers them (PCI bus order).  When the driver's own
``CUDA_VISIBLE_DEVICES`` is set, only the GPUs it names are visible: its entries are physical
ids or UUIDs (``GPU-...``, a unique prefix is enough, as for CUDA); it is read, as CUDA reads it,
up to its first entry that names no GPU found (so ``""`` and ``"-1"`` hide every GPU; a MIG
UUID names no whole GPU and ends it too).

The mapping (:func:`worker_devices`) is pure:

* ``gpus=None``: CPU workers, ``num_workers`` defaults to 2 and ``workers_per_gpu`` must stay 1.
* ``gpus="all"``, an int ``n`` (the first ``n`` visible GPUs) or a list of physical ids selects
  GPUs; ``num_workers`` defaults to ``len(gpus) * workers_per_gpu``.
* Worker ``w`` gets the one GPU ``selected[w % len(selected)]`` (round-robin), so the GPUs'
  loads differ by at most one worker.  ``workers_per_gpu`` is the most workers that share a
  GPU: a ``num_workers`` above ``len(gpus) * workers_per_gpu`` is refused; fewer is allowed
  (with fewer workers than GPUs, the last GPUs stay unused).

In the worker process (:func:`worker_env`, set before any framework is imported) a GPU worker
sees only its GPU (``CUDA_VISIBLE_DEVICES=<physical id>``, ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` so
that CUDA numbers GPUs as ``nvidia-smi`` does), so TensorFlow and torch find it as their
device 0.  A CPU worker sees no GPU (``CUDA_VISIBLE_DEVICES=""``), so its label is true and
it neither trains on nor grabs the memory of a GPU machine's
GPUs.  Every worker gets ``CEREBRO_DEVICE``: :func:`device_label` of what the backend gave it,
``"cpu"`` or ``"cuda:<physical id>"`` (several ids would be joined with commas; a LocalBackend
worker always gets one).  The worker reads it with :func:`worker_device`.

Internal, for tests only: the environment variable ``CEREBRO_FAKE_GPUS`` (e.g. ``"0,1,2,3"``;
``""`` means none) replaces the ``nvidia-smi`` query with that list of physical ids; the
driver's ``CUDA_VISIBLE_DEVICES`` still restricts it.  It lets the placement be tested on a
machine without a GPU (the workers then get the fake ids; no framework sees a GPU).
"""

from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .._checks import check_int, is_int, param_error

__all__ = ["GpuDiscovery", "discover_gpus", "worker_devices", "worker_env", "device_label", "worker_device",
           "host", "FAKE_GPUS_ENV", "DEVICE_ENV"]

#: internal, for tests only: replaces the nvidia-smi query (comma-separated physical ids)
FAKE_GPUS_ENV = "CEREBRO_FAKE_GPUS"
#: set by LocalBackend in every worker process: "cpu" or "cuda:<physical id>"
DEVICE_ENV = "CEREBRO_DEVICE"

_OWNER = "LocalBackend"


@dataclass(frozen=True)
class GpuDiscovery:
    """What the driver can see: ``visible`` physical ids, and where they came from (for messages)."""

    visible: tuple[int, ...]
    found: tuple[int, ...]
    source: str  # "nvidia-smi" or FAKE_GPUS_ENV
    cuda_visible_devices: str | None

    def describe(self) -> str:
        found = ", ".join(map(str, self.found)) or "none"
        cvd = " is not set" if self.cuda_visible_devices is None else f"={self.cuda_visible_devices!r}"
        return f"{self.source} found {found}; CUDA_VISIBLE_DEVICES{cvd}"


def _nvidia_smi() -> list[tuple[int, str]]:
    """(index, uuid) of every GPU nvidia-smi lists; [] when it is absent, fails or hangs."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,uuid", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    if out.returncode != 0:
        return []
    gpus = []
    for line in out.stdout.splitlines():
        index, _, uuid = (part.strip() for part in line.partition(","))
        if index.isdigit():
            gpus.append((int(index), uuid))
    return gpus


def _restrict(found: Sequence[tuple[int, str]], cvd: str) -> tuple[int, ...]:
    """The GPUs ``CUDA_VISIBLE_DEVICES=cvd`` leaves visible, read up to its first bad entry."""
    by_index = {i: i for i, _ in found}
    visible: list[int] = []
    for entry in (e.strip() for e in cvd.split(",")):
        if entry.isdigit() and int(entry) in by_index:
            index = int(entry)
        else:
            matches = [i for i, uuid in found if entry and uuid and uuid.startswith(entry)]
            if len(matches) != 1:
                break  # CUDA ignores the rest of the list after an entry that names no GPU
            index = matches[0]
        if index not in visible:
            visible.append(index)
    return tuple(visible)


def discover_gpus(environ: Mapping[str, str] | None = None) -> GpuDiscovery:
    """The GPUs this process may give to workers (physical ids), without importing a framework."""
    env = os.environ if environ is None else environ
    fake = env.get(FAKE_GPUS_ENV)
    if fake is not None:
        source = FAKE_GPUS_ENV
        found = [(int(e.strip()), "") for e in fake.split(",") if e.strip().isdigit()]
    else:
        source = "nvidia-smi"
        found = _nvidia_smi()
    ids = tuple(i for i, _ in found)
    cvd = env.get("CUDA_VISIBLE_DEVICES")
    visible = ids if cvd is None else _restrict(found, cvd)
    return GpuDiscovery(visible, ids, source, cvd)


def _listed(ids: Sequence[int]) -> str:
    return ", ".join(map(str, ids)) or "none"


def worker_devices(gpus: Any, workers_per_gpu: Any, num_workers: Any,
                   visible: Sequence[int] | GpuDiscovery, owner: str = _OWNER) -> list[tuple[int, ...]]:
    """Each worker's GPUs (physical ids; ``()`` for a CPU worker), one entry per worker.

    ``visible`` is a :class:`GpuDiscovery` or the visible physical ids.  Raises the standard
    ValueError (TypeError for a ``gpus`` of the wrong type) naming the argument at fault.
    """
    workers_per_gpu = check_int(owner, "workers_per_gpu", workers_per_gpu)
    if gpus is None:
        if workers_per_gpu != 1:
            raise param_error(owner, "workers_per_gpu", "1 when gpus=None (CPU workers)", workers_per_gpu)
        n = 2 if num_workers is None else check_int(owner, "num_workers", num_workers)
        return [()] * n
    if isinstance(visible, GpuDiscovery):
        ids, context = visible.visible, f" ({visible.describe()})"
    else:
        ids, context = tuple(visible), ""
    selected = _select(owner, gpus, ids, context)
    most = len(selected) * workers_per_gpu
    if num_workers is None:
        n = most
    else:
        n = check_int(owner, "num_workers", num_workers, maximum=most, expected=(
            f"None or an int in [1, {most}] ({len(selected)} GPU{'s' if len(selected) > 1 else ''} "
            f"x workers_per_gpu={workers_per_gpu}; raise workers_per_gpu to put more workers on a GPU)"))
    return [(selected[w % len(selected)],) for w in range(n)]


def _select(owner: str, gpus: Any, visible: tuple[int, ...], context: str) -> tuple[int, ...]:
    if isinstance(gpus, str):
        if gpus != "all":
            raise param_error(owner, "gpus", "None, 'all', an int >= 1 or a list of GPU ids", gpus)
        wanted: tuple[int, ...] | int = len(visible)
    elif is_int(gpus):
        wanted = check_int(owner, "gpus", gpus, expected="None, 'all', an int >= 1 or a list of GPU ids")
    elif isinstance(gpus, (list, tuple)):
        if not gpus or not all(is_int(g) and g >= 0 for g in gpus):
            raise param_error(owner, "gpus", "a non-empty list of GPU ids (ints >= 0)", gpus)
        if len(set(gpus)) != len(gpus):
            raise param_error(owner, "gpus", "a list of distinct GPU ids", gpus)
        wanted = tuple(int(g) for g in gpus)
    else:
        raise param_error(owner, "gpus", "None, 'all', an int >= 1 or a list of GPU ids", gpus, TypeError)
    if not visible:
        raise ValueError(f"{owner}(gpus={gpus!r}) asks for GPUs, but no GPU is visible{context}.")
    if isinstance(wanted, int):
        if wanted > len(visible):
            raise ValueError(f"{owner}(gpus={gpus!r}) asks for {wanted} GPUs, but only {len(visible)} "
                             f"{'is' if len(visible) == 1 else 'are'} visible: {_listed(visible)}{context}.")
        return visible[:wanted]
    for g in wanted:
        if g not in visible:
            raise ValueError(f"{owner}(gpus={gpus!r}): GPU {g} does not exist or is hidden; "
                             f"visible: {_listed(visible)}{context}.")
    return wanted


def device_label(ids: Sequence[int | str]) -> str:
    """``"cpu"`` for no GPU, else ``"cuda:<physical id>"`` (several ids joined with commas)."""
    return "cuda:" + ",".join(str(i) for i in ids) if ids else "cpu"


def worker_env(ids: Sequence[int]) -> dict[str, str]:
    """The environment variables a worker with GPUs ``ids`` sets before importing a framework
    (no ids: a CPU worker, which sees no GPU)."""
    env = {DEVICE_ENV: device_label(ids), "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in ids)}
    if ids:
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    return env


def worker_device() -> str:
    """This worker's device label, as its backend set it (``"cpu"`` when none did)."""
    return os.environ.get(DEVICE_ENV, "cpu")


def host() -> str:
    """This machine's host name, as a worker reports it."""
    return socket.gethostname()
