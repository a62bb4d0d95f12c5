"""The systems the benchmark compares, each a real engine on the workload of ``benchmarks.workload``.

Every engine is a command that trains the configurations for the jobs it is given and writes
one JSON file; ``benchmarks.run`` starts them one after another, each in its own processes:

- ``sequential``: one process trains every configuration, one after another (Keras 3);
- ``sequential-lean``: the same with the training loop of cerebro's workers instead of
  ``model.fit`` (the compiled step over seeded row orders): the physical limit of one worker;
- ``task-parallel``: p processes, each with its own full copy of the data, take whole
  configurations from a shared queue (the Celery / SparkTrials pattern; Keras 3);
- ``model-averaging``: p processes (``torchrun``); each trains a replica of the configuration
  on its shard for an epoch (Keras 3), then the weights are averaged (``torch.distributed``
  all-reduce over Gloo); optimizer states stay local;
- ``ddp``: PyTorch ``DistributedDataParallel`` over Gloo (``torchrun``), configurations one
  after another, each on all p processes;
- ``horovod``: Horovod 0.28.1 over Gloo (``horovodrun --gloo``) with its PyTorch binding, the
  same training loop as ``ddp``;
- ``ps``: TensorFlow ``ParameterServerStrategy`` with ``tf_keras`` ``model.fit`` (p worker
  servers + 1 parameter server as ``tf.distribute.Server`` processes on 127.0.0.1, this process
  the coordinator);
- ``mop``: cerebro's ``GridSearch`` on ``LocalBackend(p)`` or ``SparkBackend`` on ``local[p]``
  (Keras 3, ``KerasEstimator``);
- ``mop-torch``: the same ``GridSearch`` on ``LocalBackend(p)`` with ``TorchEstimator``: the
  model, initial weights, optimizer, loss and batch size of ``ddp`` and ``horovod``, so that
  the all-reduce / MOP ratio compares one framework.
- ``mop-asha``: cerebro's ``ASHASearch`` on ``LocalBackend(p)`` over the same configurations,
  with the ASHA settings of ``ray-tune-asha``;
- ``ray-tune``, ``ray-tune-asha``: Ray Tune (``ray[tune]``), a function trainable with the data
  shared through ``tune.with_parameters``, p concurrent trials of 1 CPU each, each trial one
  configuration trained with ``model.fit`` in a process of its own; FIFO or ``ASHAScheduler``.

Data-parallel engines use the per-worker batch size of the configuration (a global batch of
p x batch, the Horovod convention, which needs the fewest all-reduce steps) and the
configuration's learning rate unchanged.

Clocks: each job's ``span_s`` runs from the moment every worker holds its data and is ready to
the end of the last configuration's last evaluation; process start-up and data loading are
outside it, model building, compiling and tracing inside (they are part of training a
configuration).  ``cpu_s`` is the CPU time the worker processes used within the span.

Usage (normally through ``python -m benchmarks.run``):
    python -m benchmarks.baselines ENGINE --jobs JOBS.json --out OUT.json [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import workload as wl

ENGINES = ("sequential", "sequential-lean", "task-parallel", "model-averaging", "ddp", "horovod", "ps", "mop", "mop-spark",
           "mop-torch", "mop-asha", "ray-tune", "ray-tune-asha")


# ---------------------------------------------------------------------------- helpers

def _read_jobs(path: str) -> list[dict]:
    with open(path) as fh:
        return json.load(fh)


def _write(path: str, obj) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1)
    os.replace(tmp, path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _configs(job: dict) -> list[dict]:
    configs = wl.configurations(job.get("num_configs", 8))
    return configs[: job["max_configs"]] if job.get("max_configs") else configs


def _keras_train_config(keras, params, index, x, y, xv, yv, epochs, seed, on_epoch=None):
    """Train one configuration in this process (Keras 3), evaluating after every epoch.
    ``on_epoch(epoch, loss, accuracy, seconds)`` is called after each (Ray Tune reports there)."""
    keras.utils.set_random_seed(seed + index)
    model = wl.compile_keras(wl.keras_model(params, keras), params, keras)
    accs, losses = [], []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        model.fit(x, y, batch_size=params["batch_size"], epochs=1, shuffle=True, verbose=0)
        loss, acc = model.evaluate(xv, yv, batch_size=1024, verbose=0)
        accs.append(float(acc))
        losses.append(float(loss))
        if on_epoch is not None:
            on_epoch(epoch + 1, float(loss), float(acc), time.perf_counter() - t0)
    return {"params": params, "val_accuracy": accs, "val_loss": losses}


def _lean_train_config(keras, params, index, x, y, xv, yv, epochs, seed, *, cache=None):
    """Train one configuration as cerebro's workers do, on all rows, in this process.

    The loop is theirs (``train_sub_epoch`` and ``evaluate`` of
    :mod:`cerebro.frameworks.keras.train`: the model's compiled step over the rows in a seeded
    order, the metrics reset and read in a graph), and so is the reuse of a compiled model per
    architecture (``cache``: width -> model): a configuration's fresh initial state (weights and
    optimizer, its learning rate included) is loaded into the model built for its width, so
    its train step is traced once per architecture, not once per configuration."""
    from cerebro.frameworks.keras.state import state_from_bytes, state_to_bytes
    from cerebro.frameworks.keras.train import evaluate, train_sub_epoch

    keras.utils.set_random_seed(seed + index)
    model = wl.compile_keras(wl.keras_model(params, keras), params, keras)
    if cache is not None:
        built = cache.setdefault(int(params["width"]), model)
        if built is not model:
            state_from_bytes(built, state_to_bytes(model))
            model = built
    # What cerebro's build decides for this model (only Keras' own layers, loss and metric):
    # no TensorFlow seed reset per pass.
    model._cerebro_runs_users_code = False
    accs, losses = [], []
    for epoch in range(epochs):
        train_sub_epoch(model, x, y, batch_size=params["batch_size"], seed=(seed + index) * 1000 + epoch)
        metrics = evaluate(model, xv, yv, batch_size=1024)
        accs.append(float(metrics["accuracy"]))
        losses.append(float(metrics["loss"]))
    return {"params": params, "val_accuracy": accs, "val_loss": losses}


def _job_record(job, span, cpu, configs, *, stored, moved, moved_how, rows, **extra):
    return {"tag": job["tag"], "epochs": job["epochs"], "span_s": span, "cpu_s": cpu, "configs": configs,
            "bytes_stored": int(stored), "bytes_moved": int(moved), "bytes_moved_how": moved_how,
            "train_rows": int(rows), **extra}


# ---------------------------------------------------------------------------- sequential

def run_sequential(jobs: list[dict], workers: int, out: str, *, lean: bool = False) -> None:
    """One process trains every configuration: with ``model.fit`` (the accuracy reference), or
    with ``lean=True`` the loop cerebro's workers run (the physical limit of MOP's workers)."""
    wl.limit_threads(1)
    import tensorflow as tf

    wl.limit_tf_threads(tf)
    import keras

    results = []
    for job in jobs:
        x, y = wl.load_split(Path(job["data"]) / "full" / "train")
        xv, yv = wl.load_split(Path(job["data"]) / "full" / "val")
        configs = _configs(job)
        c0, t0 = time.process_time(), time.perf_counter()
        if lean:
            cache: dict = {}   # one compiled model per architecture, as a worker's ModelCache
            recs = [_lean_train_config(keras, p, i, x, y, xv, yv, job["epochs"], job.get("seed", 0), cache=cache)
                    for i, p in enumerate(configs)]
        else:
            recs = [_keras_train_config(keras, p, i, x, y, xv, yv, job["epochs"], job.get("seed", 0))
                    for i, p in enumerate(configs)]
        span, cpu = time.perf_counter() - t0, time.process_time() - c0
        results.append(_job_record(job, span, cpu, recs, stored=wl.dir_bytes(Path(job["data"]) / "full"),
                                   moved=0, moved_how="none (one process)",
                                   rows=len(x) * job["epochs"] * len(configs), workers=1))
    _write(out, {"system": "sequential-lean" if lean else "sequential", "workers": 1, "jobs": results})


# ---------------------------------------------------------------------------- task parallelism

def _task_worker(w, jobs, queues, barrier, results):
    wl.limit_threads(1)
    import tensorflow as tf

    wl.limit_tf_threads(tf)
    import keras

    for j, job in enumerate(jobs):
        x, y = wl.load_split(Path(job["data"]) / "replicas" / str(w) / "train")  # this worker's own full copy
        xv, yv = wl.load_split(Path(job["data"]) / "full" / "val")
        configs = _configs(job)
        barrier.wait()
        c0 = time.process_time()
        done = []
        while True:
            i = queues[j].get()
            if i is None:
                break
            done.append((i, _keras_train_config(keras, configs[i], i, x, y, xv, yv, job["epochs"], job.get("seed", 0))))
        results.put((j, w, time.perf_counter(), time.process_time() - c0, done))
        barrier.wait()


def run_task_parallel(jobs: list[dict], workers: int, out: str) -> None:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queues = [ctx.Queue() for _ in jobs]
    for q, job in zip(queues, jobs):
        for i in range(len(_configs(job))):
            q.put(i)
        for _ in range(workers):
            q.put(None)
    barrier = ctx.Barrier(workers + 1)
    results = ctx.Queue()
    procs = [ctx.Process(target=_task_worker, args=(w, jobs, queues, barrier, results)) for w in range(workers)]
    for p in procs:
        p.start()
    records = []
    for j, job in enumerate(jobs):
        barrier.wait(timeout=600)  # every worker has its copy loaded
        with wl.PeakRSS() as mem:
            t0 = time.perf_counter()
            got = [results.get(timeout=3600) for _ in range(workers)]
        span = max(g[2] for g in got) - t0
        recs = sorted((r for g in got for r in g[4]), key=lambda r: r[0])
        per_worker = [len(g[4]) for g in sorted(got, key=lambda g: g[1])]
        x_rows = wl.load_split(Path(job["data"]) / "full" / "train")[0].shape[0]
        replicas = sum(wl.dir_bytes(Path(job["data"]) / "replicas" / str(w)) for w in range(workers))
        stored = replicas + wl.dir_bytes(Path(job["data"]) / "full" / "val")  # + the shared validation rows
        records.append(_job_record(
            job, span, sum(g[3] for g in got), [r[1] for r in recs], stored=stored,
            moved=replicas, moved_how="computed: p full copies of the training data shipped to the workers",
            rows=x_rows * job["epochs"] * len(recs), configs_per_worker=per_worker, peak_rss_bytes=mem.peak_bytes))
        barrier.wait(timeout=600)
    for p in procs:
        p.join(timeout=60)
    _write(out, {"system": "task-parallel", "workers": workers, "jobs": records})


# ---------------------------------------------------------------------------- torchrun-launched engines

def _launch_torchrun(engine: str, jobs_path: str, workers: int, out: str) -> None:
    """The ranks of ``engine`` (``ddp``, ``model-averaging``): ``torchrun`` on 127.0.0.1, or with
    ``CEREBRO_BENCH_NETWORK`` set each rank in a host of its own of an emulated network."""
    from benchmarks import netem

    env = {**os.environ, "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    rank_cmd = ["-m", "benchmarks.baselines", f"{engine}-rank", "--jobs", jobs_path, "--out", out,
                "--workers", str(workers)]
    rate = netem.network_rate()
    if rate is None:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={workers}", "--nnodes=1",
               "--master_addr=127.0.0.1", f"--master_port={_free_port()}", *rank_cmd]
        subprocess.run(cmd, check=True, env=env)
        _tag_network(out, "loopback")
        return
    with netem.EmulatedNetwork(workers, rate) as net:
        ranks = []
        for i in range(workers):
            # What torchrun gives a rank with one process per node (--nnodes=p --nproc_per_node=1);
            # rank 0 hosts the rendezvous store.  Each namespace has its own ports: 29500 is free.
            rank_env = {**env, "RANK": str(i), "WORLD_SIZE": str(workers), "LOCAL_RANK": "0",
                        "LOCAL_WORLD_SIZE": "1", "GROUP_RANK": str(i), "ROLE_RANK": str(i),
                        "ROLE_WORLD_SIZE": str(workers), "MASTER_ADDR": net.address(0), "MASTER_PORT": "29500",
                        "GLOO_SOCKET_IFNAME": net.iface(i)}
            ranks.append((f"{engine} rank {i}", net.start(i, [sys.executable, *rank_cmd], rank_env)))
        netem.supervise(ranks)
        _tag_network(out, net.describe())


def _tag_network(out: str, network: str) -> None:
    """Record in every job of the engine's output (written by rank 0) the network it ran on."""
    with open(out) as fh:
        result = json.load(fh)
    for job in result.get("jobs", []):
        job["network"] = network
    _write(out, result)


def _shard(job, rank):
    x, y = wl.load_split(Path(job["data"]) / "shards" / str(rank) / "train")
    xv, yv = wl.load_split(Path(job["data"]) / "full" / "val")
    # Each rank scores its half of the validation rows; the counts are summed.
    return x, y, xv, yv


def _shard_bytes(job, workers):
    """The ranks' training shards plus the shared validation rows."""
    shards = sum(wl.dir_bytes(Path(job["data"]) / "shards" / str(r)) for r in range(workers))
    return shards + wl.dir_bytes(Path(job["data"]) / "full" / "val")


def _torch_gather_time(dist, t_ready, t_end, cpu):
    import torch

    buf = torch.tensor([t_ready, -t_end, -cpu], dtype=torch.float64)
    t = torch.tensor([t_end, cpu], dtype=torch.float64)
    dist.all_reduce(buf, op=dist.ReduceOp.MIN)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return -buf[1].item() - buf[0].item(), t[1].item()


def run_model_averaging_rank(jobs: list[dict], workers: int, out: str) -> None:
    wl.limit_threads(1)
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    import tensorflow as tf

    wl.limit_tf_threads(tf)
    import keras

    dist.init_process_group("gloo")
    rank, size = dist.get_rank(), dist.get_world_size()
    records = []
    for job in jobs:
        x, y, xv, yv = _shard(job, rank)
        vpart = slice(rank, None, size)
        configs = _configs(job)
        dist.barrier()
        c0, t_ready = time.process_time(), time.time()
        recs = []
        moved = 0
        for i, params in enumerate(configs):
            keras.utils.set_random_seed(job.get("seed", 0) + i)  # same initial replica on every rank
            model = wl.compile_keras(wl.keras_model(params, keras), params, keras)
            accs, losses = [], []
            for _ in range(job["epochs"]):
                model.fit(x, y, batch_size=params["batch_size"], epochs=1, shuffle=True, verbose=0)
                weights = model.get_weights()
                flat = torch.from_numpy(np.concatenate([w.ravel() for w in weights]).astype(np.float32))
                dist.all_reduce(flat)
                flat /= size
                moved += 2 * flat.numel() * 4 * size  # every replica sent and received once
                pos, new = 0, []
                for w in weights:
                    new.append(flat[pos:pos + w.size].numpy().reshape(w.shape))
                    pos += w.size
                model.set_weights(new)
                loss, acc = model.evaluate(xv[vpart], yv[vpart], batch_size=1024, verbose=0)
                n = len(yv[vpart])
                agg = torch.tensor([acc * n, loss * n, n], dtype=torch.float64)
                dist.all_reduce(agg)
                accs.append(agg[0].item() / agg[2].item())
                losses.append(agg[1].item() / agg[2].item())
            recs.append({"params": params, "val_accuracy": accs, "val_loss": losses})
        span, cpu = _torch_gather_time(dist, t_ready, time.time(), time.process_time() - c0)
        if rank == 0:
            records.append(_job_record(job, span, cpu, recs, stored=_shard_bytes(job, size), moved=moved,
                                       moved_how="computed: 2 x model size x p per configuration-epoch",
                                       rows=len(x) * size * job["epochs"] * len(configs)))
    if rank == 0:
        _write(out, {"system": "model-averaging", "workers": size, "jobs": records})
    dist.destroy_process_group()


def _torch_data_parallel(jobs, out, system, *, rank, size, wrap, allreduce_sum, barrier):
    """The training loop shared by DDP and Horovod: per-rank batch = the configuration's batch size."""
    import torch

    records = []
    for job in jobs:
        x, y, xv, yv = _shard(job, rank)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        vpart = slice(rank, None, size)
        xvt, yvt = torch.from_numpy(xv[vpart]), torch.from_numpy(yv[vpart])
        configs = _configs(job)
        barrier()
        c0, t_ready = time.process_time(), time.time()
        recs, moved = [], 0
        for i, params in enumerate(configs):
            model = wl.torch_model(params, job.get("seed", 0) + i)
            opt = torch.optim.Adam(model.parameters(), lr=params["learning_rate"], eps=1e-7)  # Keras' epsilon
            model, opt = wrap(model, opt)
            b = params["batch_size"]
            loss_fn = torch.nn.CrossEntropyLoss()
            accs, losses = [], []
            steps = 0
            for epoch in range(job["epochs"]):
                model.train()
                perm = torch.from_numpy(np.random.default_rng([job.get("seed", 0), i, epoch, rank]).permutation(len(xt)))
                for start in range(0, len(xt), b):
                    idx = perm[start:start + b]
                    opt.zero_grad()
                    loss = loss_fn(model(xt[idx]), yt[idx])
                    loss.backward()
                    opt.step()
                    steps += 1
                model.eval()
                with torch.no_grad():
                    logits = model(xvt)
                    agg = torch.tensor([(logits.argmax(1) == yvt).sum().item(),
                                        loss_fn(logits, yvt).item() * len(yvt), len(yvt)], dtype=torch.float64)
                agg = allreduce_sum(agg)
                accs.append(agg[0].item() / agg[2].item())
                losses.append(agg[1].item() / agg[2].item())
            m_bytes = 4 * wl.num_parameters(params)
            moved += 2 * m_bytes * (size - 1) * steps  # ring all-reduce: 2 (p-1)/p of the model per worker per step
            recs.append({"params": params, "val_accuracy": accs, "val_loss": losses, "steps_per_rank": steps})
        t_end, cpu = time.time(), time.process_time() - c0
        t = allreduce_sum(torch.tensor([cpu], dtype=torch.float64)).item()
        first = -allreduce_max(allreduce_sum, torch.tensor([-t_ready], dtype=torch.float64), size)
        last = allreduce_max(allreduce_sum, torch.tensor([t_end], dtype=torch.float64), size)
        if rank == 0:
            records.append(_job_record(job, last - first, t, recs, stored=_shard_bytes(job, size), moved=moved,
                                       moved_how="computed: 2 x model size x (p-1) x steps (ring all-reduce)",
                                       rows=len(x) * size * job["epochs"] * len(configs)))
    if rank == 0:
        _write(out, {"system": system, "workers": size, "jobs": records})


def allreduce_max(allreduce_sum, value, size):
    """Max through a sum-only collective: gather every rank's value by one-hot slots."""
    import torch

    rank = int(os.environ.get("RANK", os.environ.get("HOROVOD_RANK", "0")))
    slots = torch.zeros(size, dtype=torch.float64)
    slots[rank] = value.item()
    return allreduce_sum(slots).max().item()


def run_ddp_rank(jobs: list[dict], workers: int, out: str) -> None:
    wl.limit_threads(1)
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")

    def wrap(model, opt):
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        return ddp, torch.optim.Adam(ddp.parameters(), lr=opt.param_groups[0]["lr"], eps=1e-7)

    def allreduce_sum(t):
        dist.all_reduce(t)
        return t

    _torch_data_parallel(jobs, out, "ddp", rank=dist.get_rank(), size=dist.get_world_size(), wrap=wrap,
                         allreduce_sum=allreduce_sum, barrier=dist.barrier)
    dist.destroy_process_group()


def run_horovod_rank(jobs: list[dict], workers: int, out: str) -> None:
    wl.limit_threads(1)
    import torch

    torch.set_num_threads(1)
    import horovod.torch as hvd

    hvd.init()

    def wrap(model, opt):
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        dopt = hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters())
        hvd.broadcast_optimizer_state(dopt, root_rank=0)
        return model, dopt

    def allreduce_sum(t):
        return hvd.allreduce(t, op=hvd.Sum)

    def barrier():
        hvd.allreduce(torch.zeros(1), op=hvd.Sum)

    os.environ["RANK"] = str(hvd.rank())
    _torch_data_parallel(jobs, out, "horovod", rank=hvd.rank(), size=hvd.size(), wrap=wrap,
                         allreduce_sum=allreduce_sum, barrier=barrier)
    hvd.shutdown()


def run_horovod(jobs_path: str, workers: int, out: str) -> None:
    from benchmarks import netem

    if netem.network_rate() is not None:
        raise RuntimeError(netem.HOROVOD_REASON)
    horovodrun = Path(sys.executable).with_name("horovodrun")
    cmd = [str(horovodrun), "-np", str(workers), "-H", f"localhost:{workers}", "--gloo",
           sys.executable, "-m", "benchmarks.baselines", "horovod-rank", "--jobs", jobs_path, "--out", out,
           "--workers", str(workers)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HOROVOD_GLOO_IFACE": "lo"}
    subprocess.run(cmd, check=True, env=env)
    _tag_network(out, "loopback")


# ---------------------------------------------------------------------------- parameter server

def run_ps_server(cluster: dict, job_name: str, index: int) -> None:
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    wl.limit_threads(1)
    import tensorflow as tf

    # One compute (intra-op) thread; the inter-op pool stays TensorFlow's default: with a single
    # inter-op thread a worker server deadlocks on the coordinator's remote functions.
    config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=1)
    server = tf.distribute.Server(tf.train.ClusterSpec(cluster), job_name=job_name, task_index=index,
                                  protocol="grpc", config=config, start=True)
    server.join()


def run_ps(jobs: list[dict], workers: int, out: str) -> None:
    """p worker servers + 1 parameter server on 127.0.0.1, this process the coordinator; with
    ``CEREBRO_BENCH_NETWORK`` set, :func:`_run_ps_emulated`."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    wl.limit_threads(1)
    from benchmarks import netem

    rate = netem.network_rate()
    if rate is not None:
        _run_ps_emulated(jobs, workers, out, rate)
        return
    cluster = {"worker": [f"127.0.0.1:{_free_port()}" for _ in range(workers)],
               "ps": [f"127.0.0.1:{_free_port()}"], "chief": [f"127.0.0.1:{_free_port()}"]}
    servers = []
    try:
        for job_name, n in (("worker", workers), ("ps", 1)):
            for i in range(n):
                servers.append(subprocess.Popen(_ps_server_cmd(cluster, job_name, i), env=_ps_env()))
        _ps_coordinate(jobs, workers, out, cluster, [p.pid for p in servers], "loopback")
    finally:
        for p in servers:
            p.kill()
        for p in servers:
            p.wait()


def _ps_server_cmd(cluster: dict, job_name: str, index: int) -> list[str]:
    return [sys.executable, "-m", "benchmarks.baselines", "ps-server", "--cluster", json.dumps(cluster),
            "--job-name", job_name, "--index", str(index)]


def _ps_env(**extra) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


#: The coordinator of an emulated run, started in its namespace: ``_ps_coordinate(*argv[1])``.
_PS_COORDINATOR = ("import json, sys; from benchmarks.baselines import _ps_coordinate; "
                   "_ps_coordinate(*json.loads(sys.argv[1]))")


def _run_ps_emulated(jobs: list[dict], workers: int, out: str, rate: str) -> None:
    """The parameter server in an emulated network of p + 2 hosts: worker server i in host i,
    the parameter server in host p, the coordinator (the chief: it dispatches every step to a
    worker and reads the weights back for evaluation) in host p + 1, a machine of its own as in
    TF's ParameterServerStrategy deployments, so its traffic crosses a link without sharing
    the parameter server's."""
    from benchmarks import netem

    port = 2222  # every namespace has its own ports
    with netem.EmulatedNetwork(workers + 2, rate) as net:
        hosts = [net.address(i) for i in range(workers + 2)]
        cluster = {"worker": [f"{h}:{port}" for h in hosts[:workers]], "ps": [f"{hosts[workers]}:{port}"],
                   "chief": [f"{hosts[workers + 1]}:{port}"]}
        # gRPC honours http(s)_proxy: the emulated hosts must be reached directly.
        direct = ",".join(filter(None, [os.environ.get("no_proxy", ""), *hosts]))
        env = _ps_env(no_proxy=direct, NO_PROXY=direct)
        servers = [(f"worker server {i}", net.start(i, _ps_server_cmd(cluster, "worker", i), env))
                   for i in range(workers)]
        servers.append(("parameter server", net.start(workers, _ps_server_cmd(cluster, "ps", 0), env)))
        network = net.describe() + "; the coordinator in a host of its own"
        args = [jobs, workers, out, cluster, [p.pid for _, p in servers], network]
        coordinator = net.start(workers + 1, [sys.executable, "-c", _PS_COORDINATOR, json.dumps(args)], env)
        netem.supervise([("ps coordinator", coordinator)], daemons=servers)


def _ps_coordinate(jobs: list[dict], workers: int, out: str, cluster: dict, server_pids: list[int],
                   network: str) -> None:
    """The coordinator of ``run_ps``: trains every configuration on the cluster's servers and
    writes the output; ``server_pids``: the servers whose CPU time is reported."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    wl.limit_threads(1)
    try:
        import psutil
    except ImportError:  # CPU time of the servers is then not reported
        psutil = None
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    import tf_keras

    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(cluster), task_type="chief", task_id=0, rpc_layer="grpc")
    strategy = tf.distribute.experimental.ParameterServerStrategy(resolver)
    records = []
    for job in jobs:
        data = Path(job["data"])
        xv, yv = wl.load_split(data / "full" / "val")
        n_train = wl.load_split(data / "full" / "train")[0].shape[0]
        train_prefix = str(data / "full" / "train")
        configs = _configs(job)

        def cpu_now():
            if psutil is None:
                return 0.0
            total = 0.0
            for pid in server_pids:
                try:
                    t = psutil.Process(pid).cpu_times()
                    total += t.user + t.system
                except psutil.Error:
                    pass
            return total

        c0, t0 = cpu_now(), time.perf_counter()
        recs, moved = [], 0
        for i, params in enumerate(configs):
            b = params["batch_size"]

            def dataset_fn(input_context, b=b, seed=job.get("seed", 0) + i):
                # Runs on the worker: each reads the shared training file and takes its shard.
                x = tf.reshape(tf.io.decode_raw(tf.io.read_file(train_prefix + "/x.f32"), tf.float32),
                               [-1, wl.NUM_FEATURES])
                y = tf.io.decode_raw(tf.io.read_file(train_prefix + "/y.i64"), tf.int64)
                ds = tf.data.Dataset.from_tensor_slices((x, y))
                ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
                return ds.shuffle(8192, seed=seed).repeat().batch(b).prefetch(2)

            tf_keras.utils.set_random_seed(job.get("seed", 0) + i)
            with strategy.scope():
                model = wl.compile_keras(wl.keras_model(params, tf_keras), params, tf_keras)
            local = wl.compile_keras(wl.keras_model(params, tf_keras), params, tf_keras)
            steps = -(-n_train // b)  # one epoch of rows, each step one batch on one worker
            accs, losses = [], []
            for _ in range(job["epochs"]):
                model.fit(tf_keras.utils.experimental.DatasetCreator(dataset_fn), epochs=1,
                          steps_per_epoch=steps, verbose=0)
                local.set_weights(model.get_weights())
                loss, acc = local.evaluate(xv, yv, batch_size=1024, verbose=0)
                accs.append(float(acc))
                losses.append(float(loss))
            moved += 2 * 4 * wl.num_parameters(params) * steps * job["epochs"]  # pull + push per step
            recs.append({"params": params, "val_accuracy": accs, "val_loss": losses})
        span = time.perf_counter() - t0
        records.append(_job_record(job, span, cpu_now() - c0, recs, stored=wl.dir_bytes(data / "full"),
                                   moved=moved, moved_how="computed: 2 x model size x steps (pull + push)",
                                   rows=n_train * job["epochs"] * len(configs),
                                   cpu_covers="worker and ps servers (not the coordinator)",
                                   network=network))
    _write(out, {"system": "ps", "workers": workers, "jobs": records})


# ---------------------------------------------------------------------------- Ray Tune

#: ASHA's settings, the same for Ray Tune's ``ASHAScheduler`` and cerebro's ``ASHASearch``:
#: rungs at 1, 3, 9, ... epochs (and the last epoch), the top third promoted.
ASHA_GRACE_PERIOD = 1
ASHA_REDUCTION_FACTOR = 3


def _ray_trial(config, x=None, y=None, xv=None, yv=None, job=None):
    """One Ray Tune trial: one configuration trained with ``model.fit`` on all rows in this
    trial's process (Ray starts one per trial), reporting after every epoch.  The data
    arrives through ``tune.with_parameters``: one copy in the node's object store, read
    without a copy by every trial on the node."""
    from ray import tune

    c0 = time.process_time()
    wl.limit_threads(1)
    import tensorflow as tf

    wl.limit_tf_threads(tf)
    import keras

    index = int(config["index"])
    setup = {"setup_cpu_s": time.process_time() - c0}
    work = [0.0]

    def report(epoch, loss, acc, seconds):
        work[0] += seconds
        tune.report({"val_accuracy": acc, "val_loss": loss, "index": index, "work_s": work[0],
                     "cpu_s": time.process_time(), **setup})

    _keras_train_config(keras, _configs(job)[index], index, x, y, xv, yv, job["epochs"], job.get("seed", 0),
                        on_epoch=report)


def run_ray_tune(jobs: list[dict], workers: int, out: str, *, asha: bool = False) -> None:
    """Ray Tune the way its documentation trains Keras models: a function trainable, the data
    shared through ``tune.with_parameters``, ``workers`` concurrent trials of 1 CPU each, a
    grid over the configurations; FIFO (every trial runs every epoch) or ``ASHAScheduler``."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    wl.limit_threads(1)
    t0 = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
                                       "PYTHONPATH": os.environ.get("PYTHONPATH", "")}})
    init_s = time.perf_counter() - t0
    records = []
    try:
        with tempfile.TemporaryDirectory(prefix="cerebro-bench-ray-") as tmp:
            for job in jobs:
                x, y = wl.load_split(Path(job["data"]) / "full" / "train")
                xv, yv = wl.load_split(Path(job["data"]) / "full" / "val")
                configs = _configs(job)
                epochs = job["epochs"]
                scheduler = (ASHAScheduler(time_attr="training_iteration", max_t=epochs,
                                           grace_period=min(ASHA_GRACE_PERIOD, epochs),
                                           reduction_factor=ASHA_REDUCTION_FACTOR)
                             if asha else FIFOScheduler())
                trainable = tune.with_resources(tune.with_parameters(_ray_trial, x=x, y=y, xv=xv, yv=yv, job=job),
                                                {"cpu": 1})
                tuner = tune.Tuner(
                    trainable, param_space={"index": tune.grid_search(list(range(len(configs))))},
                    tune_config=tune.TuneConfig(metric="val_accuracy", mode="max", scheduler=scheduler,
                                                max_concurrent_trials=workers),
                    run_config=tune.RunConfig(name=job["tag"], storage_path=tmp, verbose=0))
                with wl.PeakRSS() as mem:
                    start = time.perf_counter()
                    grid = tuner.fit()
                    span = time.perf_counter() - start
                recs, work, cpu, setup_cpu, trained = [], 0.0, 0.0, 0.0, 0
                for result in grid:
                    if result.error:
                        raise RuntimeError(f"Ray Tune trial {result.config} failed: {result.error}")
                    hist = result.metrics_dataframe.sort_values("training_iteration")
                    index = int(result.config["index"])
                    recs.append({"params": configs[index], "val_accuracy": [float(v) for v in hist["val_accuracy"]],
                                 "val_loss": [float(v) for v in hist["val_loss"]]})
                    work += float(hist["work_s"].iloc[-1])
                    cpu += float(hist["cpu_s"].iloc[-1])
                    setup_cpu += float(hist["setup_cpu_s"].iloc[-1])
                    trained += len(hist)
                recs.sort(key=lambda r: wl.config_index(r["params"]))
                object_bytes = x.nbytes + y.nbytes + xv.nbytes + yv.nbytes
                records.append(_job_record(
                    job, span, cpu, recs, stored=wl.dir_bytes(Path(job["data"]) / "full"),
                    moved=object_bytes, rows=len(x) * trained,
                    moved_how="computed: one copy of the data into the node's object store (on a cluster, one per node)",
                    busy_fraction=work / (workers * span),
                    busy_how="model.fit + evaluate time in the trials / (p x span)",
                    config_epochs=trained, peak_rss_bytes=mem.peak_bytes, object_store_bytes=int(object_bytes),
                    trial_setup_cpu_s=setup_cpu, ray_init_s=init_s, workers=workers,
                    scheduler="ASHA" if asha else "FIFO"))
    finally:
        ray.shutdown()
    _write(out, {"system": "ray-tune-asha" if asha else "ray-tune", "workers": workers, "jobs": records})


# ---------------------------------------------------------------------------- MOP

def run_mop(jobs: list[dict], workers: int, out: str, *, spark: bool = False, framework: str = "keras",
            asha: bool = False) -> None:
    """MOP: ``GridSearch`` over the workload's grid; ``framework`` "keras" (``KerasEstimator``)
    or "torch" (``TorchEstimator``, the DDP/Horovod model); ``asha``: ``ASHASearch`` over the
    same configurations instead (:class:`_GridASHASearch`), Ray Tune's ASHA's settings."""
    wl.limit_threads(1)
    import functools

    import pandas as pd

    import cerebro

    system = "mop-spark" if spark else "mop-torch" if framework == "torch" else "mop-asha" if asha else "mop"
    if spark:
        # The session the demo and the tests use: loopback only, this interpreter on the executors.
        from cerebro.backends.spark_session import local_session

        session = local_session(f"local[{workers}]", "cerebro-benchmark")
        backend = cerebro.SparkBackend(session.sparkContext, num_workers=workers)
    else:
        backend = cerebro.LocalBackend(workers, threads_per_worker=1)
    records = []
    with tempfile.TemporaryDirectory(prefix="cerebro-bench-mop-") as tmp, backend:
        for job in jobs:
            data = Path(job["data"])
            x, y = wl.load_split(data / "full" / "train")
            xv, yv = wl.load_split(data / "full" / "val")
            df = pd.DataFrame({"features": list(np.concatenate([x, xv])), "label": np.concatenate([y, yv]),
                               "is_val": np.r_[np.zeros(len(x), bool), np.ones(len(xv), bool)]})
            configs = _configs(job)
            space = {k: cerebro.hp_choice(sorted({c[k] for c in configs})) for k in configs[0]}
            store_dir = os.path.join(tmp, job["tag"])
            gen_fn = (functools.partial(wl.make_torch_estimator, seed=job.get("seed", 0)) if framework == "torch"
                      else wl.make_estimator)
            common = dict(evaluation_metric="accuracy", validation="is_val", seed=job.get("seed", 0) or 2020,
                          scheduler=job.get("scheduler", "dynamic"), verbose=0, tensorboard=False,
                          experiment_name=job["tag"])
            if asha:
                search = _grid_asha_search(backend, cerebro.LocalStore(store_dir), gen_fn, space, configs,
                                           job["epochs"], **common)
            else:
                search = cerebro.GridSearch(backend, cerebro.LocalStore(store_dir), gen_fn, space,
                                            num_epochs=job["epochs"], **common)
            with wl.PeakRSS() as mem:
                t0 = time.perf_counter()
                result = search.fit(df)
                fit_wall = time.perf_counter() - t0
            records.append(_mop_record(job, result, fit_wall, store_dir, workers))
            records[-1]["peak_rss_bytes"] = mem.peak_bytes
            records[-1]["frameworks"] = sorted({m.framework for m in result.models.values()})
            # The same rows in the baselines' raw float32 format: what the storage ratio compares.
            records[-1]["raw_data_bytes"] = wl.dir_bytes(data / "full")
    if spark:
        session.stop()
    _write(out, {"system": system, "workers": workers, "jobs": records})


def _grid_asha_search(backend, store, gen_fn, space, configs, epochs, **common):
    """``cerebro.ASHASearch`` over exactly ``configs``, in order (ASHASearch samples its
    configurations from the space; Ray Tune's grid gives each configuration once), with the
    ASHA settings Ray Tune's scheduler gets.  A custom driver, plugged in the documented way
    (docs/search_drivers.md): a ModelSelection subclass whose ``_make_driver`` returns it."""
    import cerebro
    from cerebro.drivers.asha import ASHADriver

    class GridASHADriver(ASHADriver):
        def __init__(self):
            super().__init__(len(configs), epochs, min(ASHA_GRACE_PERIOD, epochs), ASHA_REDUCTION_FACTOR)
            self.issued = 0

        def suggest(self, num_active):
            out = super().suggest(num_active)  # ASHA decides how many start now
            if not out:
                return out
            grid = [dict(c) for c in configs[self.issued: self.issued + len(out)]]
            self.issued += len(grid)
            return grid

        def get_state(self):
            return {**super().get_state(), "issued": self.issued}

        def set_state(self, state):
            super().set_state(state)
            self.issued = int(state["issued"])

    class GridASHASearch(cerebro.ASHASearch):
        def _make_driver(self):
            return GridASHADriver()

    return GridASHASearch(backend, store, gen_fn, space, num_models=len(configs), max_epochs=epochs,
                          grace_period=min(ASHA_GRACE_PERIOD, epochs), reduction_factor=ASHA_REDUCTION_FACTOR,
                          **common)


def _mop_record(job, result, fit_wall, store_dir, workers) -> dict:
    train = result.visits[result.visits.status == "ok"]
    evals = result.evaluations[result.evaluations.status == "ok"]
    tasks = pd_concat([train, evals])
    span = float(tasks.end.max() - tasks.start.min())
    work = float((tasks.load_s + tasks.compute_s + tasks.save_s).sum())
    # Data footprint: everything in the store outside the experiments (the prepared partitions).
    stored = sum(f.stat().st_size for f in Path(store_dir).rglob("*")
                 if f.is_file() and "experiments" not in f.relative_to(store_dir).parts)
    ckpt = checkpoint_sizes(result.experiment_dir)
    moved, hops = mop_bytes_moved(train, evals, ckpt)
    recs = []
    for mid, model in sorted(result.models.items(), key=lambda kv: kv[0]):
        h = model.history.sort_values("epoch")
        params = {k: (float(v) if k == "learning_rate" else int(v)) for k, v in model.params.items()}
        recs.append({"params": params, "model_id": mid, "val_accuracy": [float(v) for v in h["val_accuracy"]],
                     "val_loss": [float(v) for v in h["val_loss"]]})
    return _job_record(
        job, span, None, recs, stored=stored, moved=moved,
        moved_how="measured: checkpoint bytes x (writes + reads on another worker), from visits and checkpoint files",
        rows=int(train.rows.sum()), fit_wall_s=fit_wall, busy_fraction=work / (workers * span),
        config_epochs=int(len(result.history)),
        # A hop is the state's trip (saved, then loaded on the next worker); building a model's
        # architecture, which a worker does once and then keeps, is counted apart.
        hop_share=float((train.load_s - train.build_s + train.save_s).sum() / train.compute_s.sum()),
        build_share=float(train.build_s.sum() / train.compute_s.sum()),
        mean_hop_ms=float(1000 * (train.load_s - train.build_s + train.save_s).mean()),
        mean_sub_epoch_s=float(train.compute_s.mean()), hops=hops, checkpoint_bytes=ckpt,
        failures=len(result.failures), scheduler=job.get("scheduler", "dynamic"))


def pd_concat(frames):
    import pandas as pd

    return pd.concat(frames)


def checkpoint_sizes(experiment_dir: str) -> dict[str, int]:
    """Model id -> size of its largest checkpoint file kept in the store (``models/<id>/ckpt/*``
    under the experiment directory: the public result gives only the total, ``checkpoint_bytes``)."""
    sizes: dict[str, int] = {}
    root = Path(experiment_dir)
    for f in (root / "models").glob("*/ckpt/*"):
        if f.is_file():
            mid = f.parent.parent.name
            sizes[mid] = max(sizes.get(mid, 0), f.stat().st_size)
    return sizes


def mop_bytes_moved(train, evals, ckpt: dict[str, int]) -> tuple[int, int]:
    """Every committed training visit writes a checkpoint; every visit whose model ran last on
    another worker reads one.  Returns (bytes, hops that changed worker)."""
    import pandas as pd

    default = int(np.median(list(ckpt.values()))) if ckpt else 0
    moved, hops = 0, 0
    tasks = pd.concat([train.assign(kind="train"), evals.assign(kind="eval")]).sort_values("start")
    for mid, rows in tasks.groupby("model_id"):
        size = ckpt.get(str(mid), default)
        last = None
        for w, kind in zip(rows.worker, rows.kind):
            if kind == "train":
                moved += size
            if last is not None and w != last:
                moved += size
                hops += 1
            last = w
    return moved, hops


# ---------------------------------------------------------------------------- entry point

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("engine", choices=ENGINES + ("model-averaging-rank", "ddp-rank", "horovod-rank", "ps-server"))
    parser.add_argument("--jobs")
    parser.add_argument("--out")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cluster")
    parser.add_argument("--job-name")
    parser.add_argument("--index", type=int, default=0)
    args = parser.parse_args(argv)
    if args.engine == "ps-server":
        run_ps_server(json.loads(args.cluster), args.job_name, args.index)
        return 0
    jobs = _read_jobs(args.jobs)
    if args.engine in ("sequential", "sequential-lean"):
        run_sequential(jobs, args.workers, args.out, lean=args.engine == "sequential-lean")
    elif args.engine == "task-parallel":
        run_task_parallel(jobs, args.workers, args.out)
    elif args.engine in ("model-averaging", "ddp"):
        _launch_torchrun(args.engine, args.jobs, args.workers, args.out)
    elif args.engine == "model-averaging-rank":
        run_model_averaging_rank(jobs, args.workers, args.out)
    elif args.engine == "ddp-rank":
        run_ddp_rank(jobs, args.workers, args.out)
    elif args.engine == "horovod":
        run_horovod(args.jobs, args.workers, args.out)
    elif args.engine == "horovod-rank":
        run_horovod_rank(jobs, args.workers, args.out)
    elif args.engine == "ps":
        run_ps(jobs, args.workers, args.out)
    elif args.engine in ("mop", "mop-spark"):
        run_mop(jobs, args.workers, args.out, spark=args.engine == "mop-spark")
    elif args.engine == "mop-torch":
        run_mop(jobs, args.workers, args.out, framework="torch")
    elif args.engine == "mop-asha":
        run_mop(jobs, args.workers, args.out, asha=True)
    elif args.engine in ("ray-tune", "ray-tune-asha"):
        run_ray_tune(jobs, args.workers, args.out, asha=args.engine == "ray-tune-asha")
    return 0


if __name__ == "__main__":
    sys.exit(main())
