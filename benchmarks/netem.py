"""An emulated cluster network for the data-parallel baselines: one Linux network namespace per
host, all plugged into a bridge in a "switch" namespace, every link rate-limited with ``tbf``.

On one machine the baselines' ranks otherwise talk over loopback, which has no bandwidth to
speak of: an all-reduce costs memory copies, not a network.  Here each rank runs in a namespace
of its own (``ip netns exec``) whose only interface besides ``lo`` is one end of a veth pair;
the other end is a port of the bridge ``br0`` in the switch namespace::

    host i:  eth0 (10.77.k.(i+1)/24, tbf egress) <==veth==> p<i> (tbf egress) :switch, br0

Both ends' egress is shaped, so each direction of each link carries at most ``rate`` (a
full-duplex link, as a host's port on a switch).  Only the bandwidth is emulated: ``netem``
(added delay, loss) is not available here, so the propagation latency stays the veth's
(microseconds), and ``latency`` below is tbf's queue bound, not a delay that is added.

Set ``CEREBRO_BENCH_NETWORK`` (e.g. ``1gbit``) and ``python -m benchmarks.baselines`` runs
``ddp``, ``model-averaging`` and ``ps`` with their ranks in an :class:`EmulatedNetwork`
(``horovod`` refuses, see :func:`engine_unavailable`).  MOP's traffic is no network in the
benchmark (pipes and a shared filesystem store), so it is charged, not emulated:
:func:`charged_epoch_s`.

Needs root, ``ip`` and ``tc`` (iproute2), veth, bridge and the tbf qdisc:
:func:`unavailable` says why not when it cannot run.  Namespaces are named
``cbn<pid>n<k>h<i>`` (hosts) and ``cbn<pid>n<k>s`` (switch); leftovers of dead processes
(an engine killed with SIGKILL) are removed by :func:`cleanup_stale`, which every new
network runs first.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

#: The environment variable that turns the emulation on: a tc rate ("10gbit", "1gbit", ...);
#: unset or empty: loopback, as without this module.
ENV = "CEREBRO_BENCH_NETWORK"
#: Default tbf queue bound (see :func:`tbf_parameters`).
DEFAULT_LATENCY = "5ms"

PREFIX = "cbn"
_NAME = re.compile(rf"^{PREFIX}(\d+)(?:n\d+(?:h\d+|s)|p\d+)$")  # our namespaces; group 1: the owner's pid
_counter = itertools.count()
HOST_IFACE = "eth0"   # the interface of every host namespace (each namespace has its own names)
_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9, "tbit": 10**12}


class NetemError(RuntimeError):
    """Setting up or tearing down the emulated network failed (the message says which command)."""


# ---------------------------------------------------------------------------- small helpers

def parse_rate(rate: str) -> int:
    """A tc-style rate in bits per second: "10gbit" -> 10**10; units bit, kbit, mbit, gbit,
    tbit (powers of 1000, as tc's); a bare number is bits/s.  (tc's "bps" means *bytes*/s:
    refused here as ambiguous.)"""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", str(rate).lower())
    if not m or m.group(2) not in ("", *_UNITS):
        raise ValueError(f"{ENV} / rate: {rate!r} is not a rate such as '10gbit', '1gbit' or '100mbit'")
    bits = float(m.group(1)) * _UNITS.get(m.group(2) or "bit", 1)
    if bits < 1000:
        raise ValueError(f"rate {rate!r}: below 1 kbit/s")
    return int(bits)


def network_rate() -> str | None:
    """The rate ``CEREBRO_BENCH_NETWORK`` asks for (validated), or None for loopback."""
    rate = os.environ.get(ENV, "").strip()
    if not rate:
        return None
    parse_rate(rate)
    return rate


def tbf_parameters(rate_bits_per_s: int, latency: str = DEFAULT_LATENCY) -> list[str]:
    """The tbf arguments for one link direction.

    burst (the bucket): it must hold the largest packet the qdisc is given, and veth does
    GSO/TSO, so TCP hands it skbs of up to 64 KiB (a smaller bucket makes tbf cut every one into
    MTU-sized packets, a CPU cost a 2-core machine cannot afford at 10 Gbit/s).  It should not be
    much larger: a full bucket lets that many bytes through at memory speed after an idle spell,
    and the baselines send messages of 10^4 to 10^6 bytes between compute phases (a gradient of
    the workload's widest MLP is about 340 KB), so a large bucket would hide the link from
    exactly those messages.  Hence max(64 KiB + headers, 50 us at the rate): 70 kB at 100 Mbit/s,
    1 Gbit/s and 10 Gbit/s (a 340 KB all-reduce message still pays >= 80% of its serialisation
    time), growing only above ~11 Gbit/s, where the 50 us keeps tbf's timer wake-ups <= 20k/s.

    latency (the queue, tc's ``latency``, i.e. limit = rate x latency + burst): 5 ms, 625 kB at
    1 Gbit/s, 6.25 MB at 10 Gbit/s, about a shallow datacenter switch port's buffer; beyond it
    packets are dropped and TCP backs off instead of queueing without bound.
    """
    burst = max(70_000, int(rate_bits_per_s / 8 * 50e-6))
    return ["tbf", "rate", f"{rate_bits_per_s}bit", "burst", str(burst), "latency", latency]


def _run(argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise NetemError(f"`{' '.join(argv)}` failed (exit {proc.returncode}): "
                         f"{(proc.stderr or proc.stdout).strip()[-500:]}")
    return proc


def _namespaces() -> list[str]:
    proc = _run(["ip", "netns", "list"], check=False)
    # Lines look like "name" or "name (id: 3)".
    return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]


def _delete_namespace(name: str) -> str | None:
    """Delete one namespace (its veth ends, bridge and qdiscs go with it); the error, if any."""
    proc = _run(["ip", "netns", "delete", name], check=False)
    if proc.returncode != 0 and name in _namespaces():
        return f"{name}: {proc.stderr.strip()}"
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale() -> list[str]:
    """Delete the namespaces of this module whose owning process is dead (a run killed before
    its teardown); returns their names.  Namespaces of live processes are left alone."""
    removed = []
    for name in _namespaces():
        m = _NAME.match(name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            if _delete_namespace(name) is None:
                removed.append(name)
    return removed


def unavailable() -> str | None:
    """None when the emulation can run here, else why not.  Tries the real thing on a throwaway
    namespace (a veth pair with a tbf qdisc and a bridge) and removes it."""
    if os.geteuid() != 0:
        return "network emulation needs root (network namespaces, veth, tc)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"network emulation needs `{tool}` (iproute2), which is not on PATH"
    name = f"{PREFIX}{os.getpid()}p{next(_counter)}"
    try:
        for argv in (["ip", "netns", "add", name],
                     ["ip", "-n", name, "link", "add", "cbp0", "type", "veth", "peer", "name", "cbp1"],
                     ["ip", "-n", name, "link", "add", "br0", "type", "bridge"],
                     ["tc", "-n", name, "qdisc", "add", "dev", "cbp0", "root", *tbf_parameters(10**9)],
                     ["ip", "netns", "exec", name, "true"]):
            try:
                _run(argv)
            except NetemError as exc:
                return f"network emulation is not possible here: {exc}"
            except OSError as exc:
                return f"network emulation is not possible here: `{' '.join(argv)}`: {exc}"
    finally:
        if name in _namespaces():
            _delete_namespace(name)
    return None


def engine_unavailable(engine: str) -> str | None:
    """For the runner's availability check: None when ``engine`` can run under the network that
    ``CEREBRO_BENCH_NETWORK`` asks for (always None when it is unset), else why not."""
    try:
        rate = network_rate()
    except ValueError as exc:
        return str(exc)
    if rate is None or engine not in EMULATED_ENGINES + ("horovod",):
        return None
    if engine == "horovod":
        return HOROVOD_REASON
    return unavailable()


#: The engines whose ranks run in an emulated network when ``CEREBRO_BENCH_NETWORK`` is set.
EMULATED_ENGINES = ("ddp", "model-averaging", "ps")
HOROVOD_REASON = (
    f"horovod under {ENV}: not supported. Its ranks would have to be started by hand in the "
    "namespaces (horovod.runner's RendezvousServer plus the HOROVOD_* environment horovodrun "
    "sets); Horovod is not installed where this was written (python -m benchmarks.setup_baselines "
    "was run with --skip-horovod), so that launch could not be built and checked. "
    f"Run horovod with {ENV} unset (loopback), or use ddp, the same training loop.")


# ---------------------------------------------------------------------------- the network

class EmulatedNetwork:
    """``hosts`` namespaces on one switch, each link shaped to ``rate`` in both directions.

    Use as a context manager; the namespaces exist inside the ``with`` block only (they are
    deleted on every way out, exceptions and SIGTERM included).  ``prefix(i)`` runs a command
    in host i, ``address(i)`` is its IPv4 address, ``iface(i)`` its interface."""

    def __init__(self, hosts: int, rate: str, *, latency: str = DEFAULT_LATENCY):
        if hosts < 1:
            raise ValueError(f"an emulated network needs at least one host, not {hosts}")
        if hosts > 250:
            raise ValueError(f"{hosts} hosts: one /24 holds at most 250 here")
        self.hosts = hosts
        self.rate = rate
        self.rate_bits_per_s = parse_rate(rate)
        self.latency = latency
        k = next(_counter)
        base = f"{PREFIX}{os.getpid()}n{k}"
        self.namespaces = [f"{base}h{i}" for i in range(hosts)]
        self.switch = f"{base}s"
        self._subnet = f"10.77.{k % 256}"   # private to these namespaces: no clash with the host's
        self._created: list[str] = []
        self._old_sigterm = None

    # -- addressing
    def prefix(self, i: int) -> list[str]:
        """The argv prefix that runs a command in host ``i``."""
        return ["ip", "netns", "exec", self.namespaces[i]]

    def address(self, i: int) -> str:
        self.namespaces[i]  # noqa: B018 - IndexError for a host that does not exist
        return f"{self._subnet}.{i + 1}"

    def iface(self, i: int) -> str:
        """The interface of host ``i`` (for GLOO_SOCKET_IFNAME / HOROVOD_GLOO_IFACE)."""
        self.namespaces[i]  # noqa: B018
        return HOST_IFACE

    def describe(self) -> str:
        """What goes into the engines' job records as ``network``."""
        return f"emulated {self.rate} tbf, ranks in separate namespaces ({self.hosts} hosts on one switch)"

    # -- processes
    def start(self, i: int, argv: list[str], env: dict | None = None, **popen) -> subprocess.Popen:
        """Start ``argv`` in host ``i``.  ``ip netns exec`` execs the command (no fork), so the
        Popen's pid is the command's own."""
        return subprocess.Popen(self.prefix(i) + list(argv), env=env, **popen)

    # -- life cycle
    def __enter__(self) -> "EmulatedNetwork":
        cleanup_stale()
        if threading.current_thread() is threading.main_thread():
            # SIGTERM's default kills without unwinding; make it unwind so the teardown runs.
            self._old_sigterm = signal.signal(signal.SIGTERM, _raise_on_sigterm)
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _build(self) -> None:
        sw = self.switch
        self._add_namespace(sw)
        _run(["ip", "-n", sw, "link", "add", "br0", "type", "bridge"])
        _run(["ip", "-n", sw, "link", "set", "br0", "up"])
        shaping = tbf_parameters(self.rate_bits_per_s, self.latency)
        for i, ns in enumerate(self.namespaces):
            self._add_namespace(ns)
            port = f"p{i}"
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            # Both ends are created directly in their namespaces (never in the host's).
            _run(["ip", "link", "add", HOST_IFACE, "netns", ns, "type", "veth", "peer", "name", port, "netns", sw])
            _run(["ip", "-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", HOST_IFACE])
            _run(["ip", "-n", ns, "link", "set", HOST_IFACE, "up"])
            _run(["ip", "-n", sw, "link", "set", port, "master", "br0"])
            _run(["ip", "-n", sw, "link", "set", port, "up"])
            _run(["tc", "-n", ns, "qdisc", "add", "dev", HOST_IFACE, "root", *shaping])   # host -> switch
            _run(["tc", "-n", sw, "qdisc", "add", "dev", port, "root", *shaping])         # switch -> host

    def _add_namespace(self, name: str) -> None:
        _run(["ip", "netns", "add", name])
        self._created.append(name)

    def close(self) -> None:
        """Delete every namespace created (idempotent).  Processes still running in one keep
        its network alive until they exit: stop them first."""
        errors = [e for e in (_delete_namespace(n) for n in reversed(self._created)) if e]
        self._created.clear()
        if self._old_sigterm is not None:
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None
        if errors:
            raise NetemError("could not delete namespaces: " + "; ".join(errors))


def _raise_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def supervise(main: list[tuple[str, subprocess.Popen]],
              daemons: list[tuple[str, subprocess.Popen]] = (), *, poll_s: float = 0.2) -> None:
    """Wait until every ``main`` process has exited 0.  If one fails, or a ``daemon`` (a server
    that should outlive them) exits, the others would wait forever on their dead peer: all are
    killed and NetemError says who failed.  Whatever is still running at the end is killed
    (the daemons always are)."""
    try:
        pending = dict(main)
        while pending:
            for name, proc in list(pending.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                if rc != 0:
                    raise NetemError(f"{name} exited with status {rc} (its output is above)")
                del pending[name]
            for name, proc in daemons:
                if proc.poll() is not None:
                    raise NetemError(f"{name} exited early with status {proc.returncode} (its output is above)")
            if pending:
                time.sleep(poll_s)
    finally:
        for _, proc in [*main, *daemons]:
            if proc.poll() is None:
                proc.kill()
        for _, proc in [*main, *daemons]:
            proc.wait()


# ---------------------------------------------------------------------------- measuring it

_RECEIVER = r"""
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1)
print("ready", flush=True)
c, _ = s.accept()
buf = bytearray(1 << 20)
first = c.recv_into(buf)          # the clock starts at the first bytes (they are not counted)
t0, n = time.perf_counter(), 0
while True:
    k = c.recv_into(buf)
    if not k:
        break
    n += k
print(n / max(time.perf_counter() - t0, 1e-9), flush=True)
"""

_SENDER = r"""
import socket, sys, time
for _ in range(100):
    try:
        c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10); break
    except OSError:
        time.sleep(0.05)
else:
    sys.exit("could not connect")
data, end = bytes(1 << 18), time.perf_counter() + float(sys.argv[3])
while time.perf_counter() < end:
    c.sendall(data)
c.close()                          # the receiver reads to EOF: what was sent is counted
"""


def measure_throughput(net: EmulatedNetwork, a: int, b: int, seconds: float = 1.0) -> float:
    """Bytes per second of one TCP stream from host ``a`` to host ``b`` (plain Python sockets),
    as the receiver sees it: what the shaping lets through."""
    port = "5201"
    recv = net.start(b, [sys.executable, "-c", _RECEIVER, net.address(b), port],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    send = None
    try:
        if recv.stdout.readline().strip() != "ready":
            raise NetemError(f"throughput receiver did not start: {recv.stderr.read()[-500:]}")
        send = net.start(a, [sys.executable, "-c", _SENDER, net.address(b), port, str(seconds)],
                         stderr=subprocess.PIPE, text=True)
        _, err = send.communicate(timeout=seconds + 60)
        if send.returncode != 0:
            raise NetemError(f"throughput sender failed: {err[-500:]}")
        out, err = recv.communicate(timeout=60)
        if recv.returncode != 0:
            raise NetemError(f"throughput receiver failed: {err[-500:]}")
        return float(out.strip().splitlines()[-1])
    finally:
        for proc in (send, recv):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


# ---------------------------------------------------------------------------- MOP: charged

def charged_epoch_s(epoch_s: float, bytes_moved_per_epoch: float, workers: int, rate_bits_per_s: float) -> float:
    """MOP's epoch time with its hops charged at a link rate: charged, not emulated.

    MOP's workers exchange model state through the store (written by one worker, read by the
    next), which in the benchmark is a shared filesystem, not a network.  On a cluster each
    worker's link would carry its share, ``bytes_moved_per_epoch / workers`` (the measured
    ``bytes_moved`` counts every write and every read on another worker), at
    ``rate_bits_per_s``; the transfers are added to the measured ``epoch_s`` as if none
    overlapped with compute, and a worker's writes (egress) and reads (ingress) as if they took
    turns on its link: an upper bound.  (The store's own link is not charged: a distributed
    store, such as HDFS on the workers, spreads it over theirs.)
    """
    if workers < 1 or rate_bits_per_s <= 0:
        raise ValueError("workers must be >= 1 and the rate > 0")
    if epoch_s < 0 or bytes_moved_per_epoch < 0:
        raise ValueError("epoch_s and bytes_moved_per_epoch must be >= 0")
    return float(epoch_s) + 8.0 * bytes_moved_per_epoch / workers / rate_bits_per_s
