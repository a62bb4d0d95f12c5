"""The emulated cluster network (``benchmarks.netem``): namespaces come and go, the shaping is
real, and the data-parallel engines train with their ranks in separate namespaces.

Runs in CI after ``python -m benchmarks.setup_baselines`` (``python -m pytest benchmarks/tests``).
Where the emulation is impossible (not root, no iproute2, no veth/tbf) the tests that need it
are skipped with :func:`benchmarks.netem.unavailable`'s reason.  Tiny data, no timing
assertions beyond a coarse check that the shaping limits the rate.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import baselines, netem

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 2
REASON = netem.unavailable()
needs_netem = pytest.mark.skipif(REASON is not None, reason=f"network emulation unavailable: {REASON}")


def _ours(pid: int | None = None) -> list[str]:
    """Namespaces of this module (of process ``pid`` if given) that exist now."""
    names = [n for n in netem._namespaces() if netem._NAME.match(n)]
    return [n for n in names if pid is None or netem._NAME.match(n).group(1) == str(pid)]


# ---------------------------------------------------------------------------- pure functions

def test_parse_rate():
    assert netem.parse_rate("10gbit") == 10**10
    assert netem.parse_rate("1gbit") == 10**9
    assert netem.parse_rate("100mbit") == 10**8
    assert netem.parse_rate("2.5gbit") == 2_500_000_000
    for bad in ("fast", "10gbps", "1 GB", "", "5bit"):
        with pytest.raises(ValueError):
            netem.parse_rate(bad)


def test_network_rate_reads_the_environment(monkeypatch):
    monkeypatch.delenv(netem.ENV, raising=False)
    assert netem.network_rate() is None
    monkeypatch.setenv(netem.ENV, "  ")
    assert netem.network_rate() is None
    monkeypatch.setenv(netem.ENV, "1gbit")
    assert netem.network_rate() == "1gbit"
    monkeypatch.setenv(netem.ENV, "quick")
    with pytest.raises(ValueError, match=netem.ENV):
        netem.network_rate()


def test_tbf_bucket_holds_a_gso_packet_and_stays_small():
    for rate in (10**8, 10**9, 10**10):
        args = netem.tbf_parameters(rate)
        burst = int(args[args.index("burst") + 1])
        assert 65536 < burst <= 100_000
        assert args[args.index("rate") + 1] == f"{rate}bit"


def test_charged_epoch_s():
    # 1 GB moved by 2 workers over 1 Gbit/s links: 0.5 GB each, 4 s on top of the 10 s measured.
    assert netem.charged_epoch_s(10.0, 1e9, 2, 1e9) == pytest.approx(14.0)
    assert netem.charged_epoch_s(10.0, 0, 2, 1e9) == 10.0
    assert netem.charged_epoch_s(10.0, 1e9, 4, 1e10) == pytest.approx(10.2)
    with pytest.raises(ValueError):
        netem.charged_epoch_s(10.0, 1e9, 0, 1e9)
    with pytest.raises(ValueError):
        netem.charged_epoch_s(10.0, 1e9, 2, 0)


def test_horovod_refuses_an_emulated_network(monkeypatch):
    monkeypatch.setenv(netem.ENV, "1gbit")
    assert netem.engine_unavailable("horovod") == netem.HOROVOD_REASON
    assert netem.engine_unavailable("mop") is None
    with pytest.raises(RuntimeError, match="not supported"):
        baselines.run_horovod("unused.json", WORKERS, "unused-out.json")
    monkeypatch.delenv(netem.ENV)
    assert all(netem.engine_unavailable(e) is None for e in baselines.ENGINES)


# ---------------------------------------------------------------------------- the network

@needs_netem
def test_namespaces_exist_only_inside_the_block():
    with netem.EmulatedNetwork(3, "1gbit") as net:
        names = [*net.namespaces, net.switch]
        assert set(names) <= set(_ours(os.getpid()))
        assert [net.address(i) for i in range(3)] == [f"{net._subnet}.{i}" for i in (1, 2, 3)]
        assert net.iface(2) == "eth0" and net.rate_bits_per_s == 10**9
        # Host 0 reaches host 2 over the switch, and its interface carries the tbf qdisc.
        probe = subprocess.run(net.prefix(0) + [sys.executable, "-c",
                                                f"import socket; socket.create_connection(('{net.address(2)}', 9), 5)"],
                               capture_output=True, text=True)
        assert "refused" in probe.stderr.lower(), probe.stderr  # reached: nothing listens on port 9
        qdisc = subprocess.run(["tc", "-n", net.namespaces[0], "qdisc", "show", "dev", net.iface(0)],
                               capture_output=True, text=True, check=True).stdout
        assert "tbf" in qdisc and "rate 1Gbit" in qdisc
        qdisc = subprocess.run(["tc", "-n", net.switch, "qdisc", "show"], capture_output=True, text=True,
                               check=True).stdout
        assert qdisc.count("tbf") == 3   # the switch side of every link
    assert not set(names) & set(netem._namespaces())


@needs_netem
def test_namespaces_are_removed_after_an_exception():
    with pytest.raises(ZeroDivisionError):
        with netem.EmulatedNetwork(2, "1gbit") as net:
            names = [*net.namespaces, net.switch]
            assert set(names) <= set(netem._namespaces())
            1 / 0
    assert not set(names) & set(netem._namespaces())


@needs_netem
def test_cleanup_stale_removes_a_dead_owners_namespaces_only():
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"{netem.PREFIX}{dead.pid}n0s"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        with netem.EmulatedNetwork(1, "1gbit") as net:   # a live owner's namespaces stay
            assert stale not in netem._namespaces()      # entering cleans up the stale ones
            assert net.namespaces[0] in netem._namespaces()
            assert netem.cleanup_stale() == []
            assert net.namespaces[0] in netem._namespaces()
    finally:
        if stale in netem._namespaces():
            subprocess.run(["ip", "netns", "delete", stale])


@needs_netem
def test_shaping_limits_the_throughput():
    # 100 Mbit/s: far below what one Python TCP stream moves on a loaded 2-core machine, so the
    # link, not the CPU, sets the figure.
    with netem.EmulatedNetwork(2, "100mbit") as net:
        rate = net.rate_bits_per_s / 8
        forward = netem.measure_throughput(net, 0, 1, seconds=1.0)
        backward = netem.measure_throughput(net, 1, 0, seconds=1.0)
    for measured in (forward, backward):
        assert 0.5 * rate < measured < 1.2 * rate, (measured, rate)


# ---------------------------------------------------------------------------- the engines

@needs_netem
@pytest.mark.parametrize("engine", ["ddp", "ps"])
def test_engine_trains_over_the_emulated_network(engine, jobs):
    tmp, jobs_path = jobs
    out = tmp / f"{engine}.json"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT), netem.ENV: "1gbit"}
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.baselines", engine, "--jobs", str(jobs_path),
                             "--out", str(out), "--workers", str(WORKERS)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        log, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, log[-3000:]
    assert not _ours(proc.pid), "the engine left namespaces behind"
    (job,) = json.loads(out.read_text())["jobs"]
    assert job["network"].startswith("emulated 1gbit tbf, ranks in separate namespaces"), job["network"]
    assert len(job["configs"]) == 2 and job["span_s"] > 0 and job["bytes_moved"] > 0
    for config in job["configs"]:
        assert len(config["val_accuracy"]) == 2
        assert config["val_accuracy"][-1] > 0.5, config  # digits: far above chance (10%)
