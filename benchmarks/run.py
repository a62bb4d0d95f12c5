"""One command for every benchmark: MOP against the baselines the Cerebro paper used, plus the
scheduler simulation.  Prints a markdown table; writes ``summary.json``, ``results.json``,
``table.md`` and PNG plots under ``benchmarks/results/<name>/``.

Systems (each a real engine, see ``benchmarks.baselines``): MOP on LocalBackend (and on
SparkBackend ``local[p]`` when ``cerebro.SparkBackend``, pyspark and Java are there), MOP on
LocalBackend with PyTorch (``TorchEstimator``: the model and training loop of the DDP and
Horovod engines, so ``*_over_mop_torch`` compares one framework), task
parallelism with full replication, Horovod over Gloo (when ``benchmarks.setup_baselines``
built it), PyTorch DDP over Gloo, TensorFlow ParameterServerStrategy, model averaging, and
one sequential process.  Same workload for all (``benchmarks.workload``): 8 MLP
configurations, generated data for time, digits for accuracy, p workers of 1 thread each.

Figures per system: wall time per epoch of all configurations (the span from "all workers
ready" to the last evaluation, divided by the epochs), worker utilisation, bytes stored (data
on disk the system's workers read), bytes moved (measured for MOP; computed from model size x
steps for the others, labelled so), final validation accuracy on digits (best configuration,
and the mean over configurations) after the same epochs.

Repeats are interleaved: every repeat runs each system once, in the order of ``--only`` on
even repeats and reversed on odd ones (A B C, C B A, A B C, ...), so that a drift of the
machine's speed over the run falls alike on every system (a linear drift cancels over each
pair of repeats).  Each time ratio in ``summary.json`` (``*_over_mop``,
``mop_over_task_parallel``, ``throughput_over_physical_limit``) is the median over the repeats
of the per-repeat ratio, repeat r of one system against repeat r of the other (``--full``: 3
repeats); when the two systems do not have the same repeats (one failed), it falls back to the
ratio of their medians.  ``ratios_per_repeat`` lists the per-repeat values and
``ratios_how`` says which way each ratio was taken.  ``*_over_mop`` divide by MOP on Keras
(what every Keras system is compared with), ``*_over_mop_torch`` by MOP on PyTorch (the
all-reduce engines' framework).

``sub_epoch_fixed_cost_ms`` (and ``_torch``): the cost of a visit of one batch, train plus
evaluate, measured in a worker (``benchmarks.fixed_cost``, run once per framework in its own
process); a failure is recorded under ``errors`` with the reason.

The accuracy gap over several seeds, with 95% intervals (``benchmarks.accuracy_seeds``): run
with ``--seeds N`` (``--full``: 5, at 4 and 10 epochs; ``--quick``: 0, which says so in
``summary.json`` under ``accuracy_seeds``; ``python -m benchmarks.accuracy_seeds`` runs it alone).

Usage:
    python -m benchmarks.setup_baselines          # once: torch, tf-keras, Horovod (build)
    python -m benchmarks.run --quick              # 1 repeat, 50k rows, 1 timed epoch, 4 accuracy epochs
    python -m benchmarks.run --full               # 3 repeats, 60k rows, 2 timed epochs, 10 accuracy epochs
    python -m benchmarks.run --smoke              # tiny data, every engine once (CI)
Options: --workers P, --rows N, --repeats R, --epochs E, --accuracy-epochs E, --only a,b,
--name NAME, --out DIR, --no-sim, --no-fixed-cost, --network RATES, --seeds N.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SYSTEMS = ("sequential", "sequential-lean", "mop", "mop-spark", "mop-torch", "task-parallel", "horovod", "ddp", "ps",
           "model-averaging", "ray-tune", "mop-asha", "ray-tune-asha")
#: Systems that run a search (ASHA) instead of every configuration for every epoch: they run
#: one "search" job (the time data, ``asha_epochs`` epochs at most), timed as a whole.
SEARCH_SYSTEMS = ("mop-asha", "ray-tune-asha")
LABELS = {
    "sequential": "Sequential (1 process)",
    "sequential-lean": "Sequential, cerebro's training loop (1 process)",
    "mop": "MOP (cerebro, LocalBackend)",
    "mop-spark": "MOP (cerebro, SparkBackend local[p])",
    "mop-torch": "MOP (cerebro, LocalBackend, PyTorch)",
    "task-parallel": "Task parallel, full replication",
    "horovod": "All-reduce: Horovod 0.28.1 / Gloo (torch)",
    "ddp": "All-reduce: PyTorch DDP / Gloo",
    "ps": "Parameter server: TF ParameterServerStrategy",
    "model-averaging": "Model averaging (per epoch)",
    "ray-tune": "Ray Tune 2.60, FIFO (a process per trial)",
    "mop-asha": "MOP, ASHASearch (cerebro, LocalBackend)",
    "ray-tune-asha": "Ray Tune 2.60, ASHAScheduler",
}
PROFILES = {
    # --quick leaves out two accuracy runs to stay under 12 minutes (ACCURACY_SKIPPED says why).
    "quick": {"rows": 50000, "epochs": 1, "accuracy_epochs": 4, "repeats": 1, "timeout": 400,
              "accuracy_skip": ["mop-spark", "ray-tune"], "fixed_cost_epochs": 20, "asha_epochs": 3, "seeds": 0},
    "full": {"rows": 60000, "epochs": 2, "accuracy_epochs": 10, "repeats": 3, "timeout": 1800,
             "fixed_cost_epochs": 40, "asha_epochs": 9, "seeds": 5},
    "smoke": {"rows": 2000, "epochs": 1, "accuracy_epochs": 1, "repeats": 1, "timeout": 300, "max_configs": 2,
              "fixed_cost_epochs": 5, "asha_epochs": 2, "seeds": 0},
}
#: Why a profile may leave out a system's accuracy run: it would repeat another system's figures.
ACCURACY_SKIPPED = {
    # With the deterministic scheduler SparkBackend trains bit-identical models to LocalBackend
    # (tests/integration/test_spark_backend.py).
    "mop-spark": "identical to MOP (Local) by construction",
    # Each trial runs Sequential's training function with the same seeds (measured identical:
    # 0.9755 (0.9502) both, in a --quick run of 2026-12-03); 46 s of Ray Tune's 109 s.
    "ray-tune": "each trial runs Sequential's training code and seeds: identical to Sequential",
}
SHORT = {"sequential": "Sequential", "sequential-lean": "Sequential (lean)", "mop": "MOP (Local)",
         "mop-spark": "MOP (Spark)", "mop-torch": "MOP (torch)",
         "task-parallel": "Task parallel",
         "horovod": "Horovod", "ddp": "PyTorch DDP", "ps": "Parameter server", "model-averaging": "Model averaging",
         "ray-tune": "Ray Tune", "mop-asha": "MOP ASHA", "ray-tune-asha": "Ray Tune ASHA"}
SUMMARY_KEYS = (
    "mop_busy_fraction", "allreduce_over_mop", "horovod_over_mop", "ddp_over_mop", "horovod_over_mop_torch",
    "ddp_over_mop_torch", "ps_over_mop",
    "mop_over_task_parallel", "task_parallel_storage_over_mop", "accuracy_gap_vs_sequential",
    "model_averaging_accuracy_gap_vs_sequential", "scheduler_makespan_over_lower_bound",
    "randomized_makespan_over_lower_bound", "scheduler_decision_ms", "hop_share", "build_share",
    "throughput_over_physical_limit", "throughput_over_p_sequential_fit",
    "ray_tune_over_mop", "ray_tune_asha_over_mop_asha", "ray_tune_busy_fraction", "ray_tune_memory_over_mop",
    "ray_tune_asha_memory_over_mop_asha",
    "sub_epoch_fixed_cost_ms", "sub_epoch_fixed_cost_ms_torch", "visit_fixed_cost_ms", "visit_fixed_cost_ms_torch",
)
GOALS = {
    "mop_busy_fraction": (">=", 0.95), "allreduce_over_mop": (">=", 3.0), "ps_over_mop": (">=", 10.0),
    "mop_over_task_parallel": ("<=", 1.03), "accuracy_gap_vs_sequential": ("abs<=", 0.5),
    "scheduler_makespan_over_lower_bound": ("<=", 1.05), "scheduler_decision_ms": ("<=", 1.0),
    "hop_share": ("<=", 0.03), "throughput_over_physical_limit": (">=", 0.90),
    "sub_epoch_fixed_cost_ms": ("<=", 10.0), "sub_epoch_fixed_cost_ms_torch": ("<=", 10.0),
}
#: The time ratios of summary.json taken per repeat (numerator system, denominator system, figure).
PAIRED_RATIOS = {
    "horovod_over_mop": ("horovod", "mop", "epoch_s"),
    "ddp_over_mop": ("ddp", "mop", "epoch_s"),
    "horovod_over_mop_torch": ("horovod", "mop-torch", "epoch_s"),
    "ddp_over_mop_torch": ("ddp", "mop-torch", "epoch_s"),
    "ps_over_mop": ("ps", "mop", "epoch_s"),
    "mop_over_task_parallel": ("mop", "task-parallel", "epoch_s"),
    # The physical limit: p processes each as fast as one process running the same training
    # loop as MOP's workers (sequential-lean), without hops, checkpoints or a driver.
    "throughput_over_physical_limit": ("mop", "sequential-lean", "rows_per_s"),  # then / p
    # The same against p x one process training with Keras' own model.fit (sequential).
    "throughput_over_p_sequential_fit": ("mop", "sequential", "rows_per_s"),  # then / p
    "ray_tune_over_mop": ("ray-tune", "mop", "epoch_s"),
    # The whole search, from the first trial to the last evaluation (the two ASHAs may train
    # different numbers of configuration-epochs: see config_epochs in results.json).
    "ray_tune_asha_over_mop_asha": ("ray-tune-asha", "mop-asha", "search_s"),
}
FIXED_COST_FRAMEWORKS = ("keras", "torch")


# ---------------------------------------------------------------------------- availability

def availability(workers: int) -> dict[str, str | None]:
    """System -> None when it can run here, else why not (reported, never silently dropped)."""
    have = {m: importlib.util.find_spec(m) is not None for m in ("torch", "tf_keras", "horovod", "pyspark")}
    out: dict[str, str | None] = {s: None for s in SYSTEMS}
    if not have["torch"]:
        for s in ("ddp", "model-averaging", "horovod", "mop-torch"):
            out[s] = "torch is not installed (python -m benchmarks.setup_baselines)"
    if not have["tf_keras"]:
        out["ps"] = "tf_keras is not installed (python -m benchmarks.setup_baselines)"
    if importlib.util.find_spec("ray") is None:
        for s in ("ray-tune", "ray-tune-asha"):
            out[s] = "ray[tune] is not installed (python -m benchmarks.setup_baselines)"
    if out["horovod"] is None:
        out["horovod"] = horovod_unavailable()
    try:
        import cerebro

        cerebro.SparkBackend  # noqa: B018 - importable is the question
    except Exception as exc:  # noqa: BLE001
        out["mop-spark"] = f"cerebro.SparkBackend is not importable ({type(exc).__name__}: {exc})"
    else:
        if not have["pyspark"]:
            out["mop-spark"] = "pyspark is not installed"
        elif shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
            out["mop-spark"] = "no Java runtime for Spark"
    return out


def horovod_unavailable() -> str | None:
    """None if Horovod with Gloo imports; else the reason (from the setup's build record if any)."""
    probe = subprocess.run([sys.executable, "-c", "import horovod.torch as h; assert h.gloo_built()"],
                           capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if probe.returncode == 0:
        return None
    try:
        status = json.loads((HERE / ".build" / "baselines.json").read_text()).get("horovod", {})
    except (OSError, ValueError):
        status = {}
    if status.get("reason"):
        return f"Horovod did not build: {status['reason']} (log: {status.get('log')})"
    return "Horovod is not installed (python -m benchmarks.setup_baselines builds it)"


# ---------------------------------------------------------------------------- running

def prepare_data(root: Path, rows: int, workers: int) -> dict[str, str]:
    from benchmarks import workload as wl

    x, y = wl.make_arrays(rows)
    wl.write_dataset(root / "generated", x, y, wl.validation_mask(len(x)), shards=workers, replicas=workers)
    x, y = wl.digits_arrays()
    wl.write_dataset(root / "digits", x, y, wl.validation_mask(len(x)), shards=workers, replicas=workers)
    return {"time": str(root / "generated"), "accuracy": str(root / "digits")}


def run_engine(system: str, jobs: list[dict], workers: int, tmp: Path, timeout: float, log_dir: Path,
               env: dict | None = None, log_name: str | None = None) -> dict:
    """Run one engine in its own process group; its JSON, or {"error": ...} (never raises).
    ``env``: extra environment (``CEREBRO_BENCH_NETWORK`` for the emulated network)."""
    jobs_path = tmp / f"{system}-jobs-{time.time_ns()}.json"
    out = tmp / f"{system}-out-{time.time_ns()}.json"
    jobs_path.write_text(json.dumps(jobs))
    cmd = [sys.executable, "-m", "benchmarks.baselines", system, "--jobs", str(jobs_path), "--out", str(out),
           "--workers", str(workers)]
    return run_json_command(cmd, out, log_dir / f"{log_name or system}.log", timeout, env=env)


def run_fixed_cost(framework: str, workers: int, epochs: int, tmp: Path, timeout: float, log_dir: Path) -> dict:
    """``python -m benchmarks.fixed_cost`` in its own process group; its JSON or {"error": ...}."""
    out = tmp / f"fixed-cost-{framework}-{time.time_ns()}.json"
    cmd = [sys.executable, "-m", "benchmarks.fixed_cost", "--framework", framework, "--epochs", str(epochs),
           "--workers", str(workers), "--out", str(out)]
    return run_json_command(cmd, out, log_dir / f"fixed-cost-{framework}.log", timeout)


def run_json_command(cmd: list[str], out: Path, log: Path, timeout: float, env: dict | None = None) -> dict:
    """Run ``cmd`` (which writes JSON to ``out``) in its own process group, output to ``log``;
    the JSON plus ``wall_s``, or {"error": why, "wall_s": ...} (never raises)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1", **(env or {})}
    started = time.perf_counter()
    with open(log, "a") as fh:
        fh.write(f"\n# {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            try:  # the engine's helpers (ranks, servers, workers) live in its process group
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            if (env or {}).get("CEREBRO_BENCH_NETWORK"):
                from benchmarks import netem

                netem.cleanup_stale()  # the namespaces of an engine killed before its teardown
    wall = time.perf_counter() - started
    if rc is None:
        return {"error": f"timed out after {timeout:.0f} s (log: {log})", "wall_s": wall}
    if rc != 0 or not out.exists():
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        return {"error": f"exit {rc}: {' | '.join(tail)[-400:]} (log: {log})", "wall_s": wall}
    try:
        result = json.loads(out.read_text())
    except ValueError as exc:
        return {"error": f"unreadable output {out}: {exc} (log: {log})", "wall_s": wall}
    result["wall_s"] = wall
    return result


def run_order(systems: list[str], repeats: int) -> list[tuple[int, str]]:
    """(repeat, system) in the order the runner runs them: repeat-major (every system once per
    repeat, never one system's repeats back to back), the systems' order reversed on odd repeats
    (A B, B A, A B, ...) so that a linear drift of the machine's speed cancels over each pair."""
    order = []
    for r in range(repeats):
        for system in (systems if r % 2 == 0 else list(reversed(systems))):
            order.append((r, system))
    return order


def run_all(profile: dict, workers: int, systems: list[str], out_dir: Path, log=print) -> dict:
    """Every available system, ``profile["repeats"]`` times, in :func:`run_order`; each run's
    JSON carries its ``repeat`` (0-based), which pairs the systems' repeats in :func:`summarise`."""
    avail = availability(workers)
    runs: dict[str, list[dict]] = {s: [] for s in systems}
    errors: dict[str, str] = {}
    log_dir = out_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cerebro-bench-") as tmp_name:
        tmp = Path(tmp_name)
        data = prepare_data(tmp / "data", profile["rows"], workers)
        for r, system in run_order([s for s in systems if not avail.get(s)], profile["repeats"]):
            jobs = [{"tag": "time", "data": data["time"], "epochs": profile["epochs"], "seed": 2020,
                     "scheduler": "dynamic"}]
            if system in SEARCH_SYSTEMS:
                jobs = [{"tag": "search", "data": data["time"], "epochs": profile["asha_epochs"], "seed": 2020,
                         "scheduler": "dynamic"}]
            elif r == 0 and system not in profile.get("accuracy_skip", ()):
                jobs.append({"tag": "accuracy", "data": data["accuracy"], "epochs": profile["accuracy_epochs"],
                             "seed": 2020, "scheduler": "deterministic"})
            for job in jobs:
                if profile.get("max_configs"):
                    job["max_configs"] = profile["max_configs"]
            log(f"# repeat {r + 1}/{profile['repeats']}: {system} ...")
            res = run_engine(system, jobs, workers, tmp, profile["timeout"], log_dir)
            if "error" in res:
                errors[f"{system} (repeat {r + 1})"] = res["error"]
                log(f"#   {system} FAILED: {res['error']}")
            else:
                res["repeat"] = r
                runs[system].append(res)
                spans = {j["tag"]: round(j["span_s"], 1) for j in res["jobs"]}
                log(f"#   {system}: spans {spans} s, process wall {res['wall_s']:.0f} s")
    return {"runs": runs, "errors": errors, "unavailable": {s: why for s, why in avail.items() if why and s in systems}}


def fixed_cost_all(workers: int, epochs: int, out_dir: Path, log=print, timeout: float = 600) -> dict:
    """``benchmarks.fixed_cost`` for Keras and (when torch is installed) PyTorch.  Returns
    {"figures": {framework: figures}, "errors": {...}, "unavailable": {...}}: a failure or a
    missing framework is recorded with its reason, never dropped."""
    log_dir = out_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    figures, errors, unavailable = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="cerebro-bench-fixed-") as tmp_name:
        for framework in FIXED_COST_FRAMEWORKS:
            name = f"fixed-cost ({framework})"
            if framework == "torch" and importlib.util.find_spec("torch") is None:
                unavailable[name] = "torch is not installed (python -m benchmarks.setup_baselines)"
                log(f"# {name}: unavailable: {unavailable[name]}")
                continue
            log(f"# {name}, {epochs} epochs ...")
            res = run_fixed_cost(framework, workers, epochs, Path(tmp_name), timeout, log_dir)
            if "error" in res:
                errors[name] = res["error"]
                log(f"#   {name} FAILED: {res['error']}")
            else:
                figures[framework] = res
                log(f"#   {name}: sub_epoch_fixed_cost_ms {res['sub_epoch_fixed_cost_ms']:.2f}, "
                    f"visit_fixed_cost_ms {res['visit_fixed_cost_ms']:.2f}")
    return {"figures": figures, "errors": errors, "unavailable": unavailable}


# ---------------------------------------------------------------------------- emulated network

#: The data-parallel systems whose ranks run in separate namespaces under ``--network``.
NETWORK_SYSTEMS = ("ddp", "model-averaging", "ps", "horovod")


def network_all(rates: list[str], systems: list[str], profile: dict, workers: int, out_dir: Path,
                log=print) -> dict:
    """The data-parallel ``systems`` at every rate with ``CEREBRO_BENCH_NETWORK=<rate>``
    (benchmarks.netem: each rank in a namespace of its own, links shaped with tbf), on the time
    job, ``profile["repeats"]`` times in the interleaved order of :func:`run_order` over the
    (rate, system) pairs.  Returns {"runs": {rate: {system: figures}}, "errors", "unavailable"}."""
    from benchmarks import netem

    out: dict = {"runs": {}, "errors": {}, "unavailable": {}}
    why = netem.unavailable()
    if why:
        out["unavailable"]["network"] = why
        log(f"# emulated network: unavailable: {why}")
        return out
    log_dir = out_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cerebro-bench-net-") as tmp_name:
        tmp = Path(tmp_name)
        data = prepare_data(tmp / "data", profile["rows"], workers)
        pairs = []
        for rate in rates:
            for system in systems:
                reason = netem.engine_unavailable(system) if system != "horovod" else netem.HOROVOD_REASON
                if reason:
                    out["unavailable"][f"{system} at {rate}"] = reason
                    log(f"# {system} at {rate}: unavailable: {reason[:120]}")
                else:
                    pairs.append(f"{system}@{rate}")
        got: dict[str, list[dict]] = {pair: [] for pair in pairs}
        for r, pair in run_order(pairs, profile.get("repeats", 1)):
            system, rate = pair.split("@")
            job = {"tag": "time", "data": data["time"], "epochs": profile["epochs"], "seed": 2020,
                   "scheduler": "dynamic", **({"max_configs": profile["max_configs"]} if profile.get("max_configs") else {})}
            log(f"# repeat {r + 1}: {system} over an emulated {rate} network ...")
            res = run_engine(system, [job], workers, tmp, profile["timeout"], log_dir,
                             env={netem.ENV: rate}, log_name=f"{system}-{rate}")
            if "error" in res:
                out["errors"][f"{system} at {rate} (repeat {r + 1})"] = res["error"]
                log(f"#   {system} at {rate} FAILED: {res['error']}")
                continue
            res["repeat"] = r
            got[pair].append(res)
            log(f"#   {system} at {rate}: {res['jobs'][0]['span_s'] / res['jobs'][0]['epochs']:.1f} s / epoch")
        for rate in rates:
            out["runs"][rate] = {}
            for pair, runs in got.items():
                system, r8 = pair.split("@")
                if r8 == rate and runs:
                    out["runs"][rate][system] = system_figures(system, runs, workers)
                    out["runs"][rate][system]["network"] = runs[0]["jobs"][0].get("network")
    return out


def network_summary(net: dict, figures: dict, workers: int) -> dict:
    """Per rate: each emulated system's s / epoch, MOP's with its measured hop bytes charged at
    the rate (``netem.charged_epoch_s``: charged, not emulated), and their ratio; the loopback
    figures beside (pure)."""
    from benchmarks import netem

    mop = figures.get("mop") or {}
    table: dict = {}
    for rate, runs in net.get("runs", {}).items():
        row: dict = {}
        mop_s = None
        if mop.get("epoch_s") is not None:
            mop_s = netem.charged_epoch_s(mop["epoch_s"], mop.get("bytes_moved_per_epoch") or 0, workers,
                                          netem.parse_rate(rate))
        row["mop_charged_epoch_s"] = mop_s
        for system, g in runs.items():
            row[f"{system}_epoch_s"] = g.get("epoch_s")
            row[f"{system}_epoch_s_all"] = g.get("epoch_s_all")
            row[f"{system}_over_mop"] = _ratio(g.get("epoch_s"), mop_s)
        table[rate] = row
    loop = {"mop_charged_epoch_s": mop.get("epoch_s"), "mop_epoch_s_all": mop.get("epoch_s_all")}
    for system in NETWORK_SYSTEMS:
        if (figures.get(system) or {}).get("epoch_s") is not None:
            loop[f"{system}_epoch_s"] = figures[system]["epoch_s"]
            loop[f"{system}_epoch_s_all"] = figures[system].get("epoch_s_all")
            loop[f"{system}_over_mop"] = _ratio(figures[system]["epoch_s"], mop.get("epoch_s"))
    return {"loopback": loop, **table} if table else {}


def network_lines(table: dict) -> list[str]:
    if not table:
        return []
    systems = [s for s in NETWORK_SYSTEMS if any(f"{s}_epoch_s" in row for row in table.values())]
    lines = ["", "Emulated network (data-parallel ranks in separate namespaces, veth links shaped with tbf; "
             "MOP's measured hop bytes charged at the link rate, not emulated): s / epoch, and / MOP", "",
             "| network | MOP (charged) | " + " | ".join(SHORT[s] for s in systems) + " |",
             "|---|---:|" + "---:|" * len(systems)]
    for rate, row in table.items():
        cells = [f"{_fmt(row.get(f'{s}_epoch_s'), 1)}{_spread(row.get(f'{s}_epoch_s_all'))} "
                 f"({_fmt(row.get(f'{s}_over_mop'), 2)}x)" for s in systems]
        lines.append(f"| {rate} | {_fmt(row.get('mop_charged_epoch_s'), 2)} | " + " | ".join(cells) + " |")
    return lines


def _spread(values) -> str:
    """`` [min-max]`` of more than one repeat's values, else nothing."""
    values = [v for v in values or () if v is not None]
    return f" [{min(values):.1f}-{max(values):.1f}]" if len(values) > 1 else ""


# ---------------------------------------------------------------------------- arithmetic (pure)

def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def job_of(run: dict, tag: str) -> dict | None:
    return next((j for j in run.get("jobs", []) if j["tag"] == tag), None)


def system_figures(system: str, runs: list[dict], workers: int) -> dict:
    """Per-system medians over the repeats (time job) and the accuracy job's figures."""
    timed = [j for r in runs for j in [job_of(r, "time")] if j]
    repeat_of = [r.get("repeat", i) for i, r in enumerate(runs) if job_of(r, "time")]
    acc = next((j for r in runs for j in [job_of(r, "accuracy")] if j), None)
    p = 1 if system.startswith("sequential") else workers
    fig: dict = {"system": system, "repeats": len(timed)}
    if timed:
        fig["epoch_s"] = _median([j["span_s"] / j["epochs"] for j in timed])
        fig["rows_per_s"] = _median([j["train_rows"] / j["span_s"] for j in timed])
        if system.startswith("mop"):
            fig["utilisation"] = _median([j.get("busy_fraction") for j in timed])
            fig["utilisation_how"] = "task time / (p x span), from the visits"
            fig["hop_share"] = _median([j.get("hop_share") for j in timed])
            fig["build_share"] = _median([j.get("build_share") for j in timed])
            fig["mean_hop_ms"] = _median([j.get("mean_hop_ms") for j in timed])
        elif timed[0].get("busy_fraction") is not None:  # Ray Tune: the trials' training time
            fig["utilisation"] = _median([j.get("busy_fraction") for j in timed])
            fig["utilisation_how"] = timed[0].get("busy_how", "busy time / (p x span)")
        else:
            fig["utilisation"] = _median([j["cpu_s"] / (p * j["span_s"]) if j.get("cpu_s") else None for j in timed])
            fig["utilisation_how"] = "CPU seconds of the worker processes / (p x span)"
        fig["peak_rss_bytes"] = _median([j.get("peak_rss_bytes") for j in timed])
        fig["bytes_stored"] = timed[0]["bytes_stored"]
        if "raw_data_bytes" in timed[0]:
            fig["raw_data_bytes"] = timed[0]["raw_data_bytes"]
        fig["bytes_moved_per_epoch"] = _median([j["bytes_moved"] / j["epochs"] for j in timed])
        fig["bytes_moved_how"] = timed[0]["bytes_moved_how"]
        fig["epoch_s_all"] = [j["span_s"] / j["epochs"] for j in timed]
        # Per repeat (0-based index of the runner's repeat), for the paired ratios of summarise.
        fig["per_repeat"] = [{"repeat": r, "epoch_s": j["span_s"] / j["epochs"], "rows_per_s": j["train_rows"] / j["span_s"]}
                             for r, j in zip(repeat_of, timed)]
    searched = [(r.get("repeat", i), j) for i, r in enumerate(runs) for j in [job_of(r, "search")] if j]
    if searched:  # an ASHA search, timed as a whole
        fig["repeats"] = len(searched)
        fig["search_s"] = _median([j["span_s"] for _, j in searched])
        fig["search_s_all"] = [j["span_s"] for _, j in searched]
        fig["search_epochs"] = searched[0][1]["epochs"]
        fig["config_epochs"] = _median([j.get("config_epochs") for _, j in searched])
        fig["utilisation"] = _median([j.get("busy_fraction") for _, j in searched])
        fig["peak_rss_bytes"] = _median([j.get("peak_rss_bytes") for _, j in searched])
        finals = [c["val_accuracy"][-1] for c in searched[0][1]["configs"] if c["val_accuracy"]]
        fig["search_best_val_accuracy"] = max(finals) if finals else None
        fig["per_repeat"] = [{"repeat": r, "search_s": j["span_s"]} for r, j in searched]
    if acc:
        finals = [c["val_accuracy"][-1] for c in acc["configs"] if c["val_accuracy"]]
        fig["accuracy_epochs"] = acc["epochs"]
        fig["best_val_accuracy"] = max(finals) if finals else None
        fig["mean_val_accuracy"] = sum(finals) / len(finals) if finals else None
        fig["curves"] = {_config_name(c["params"]): c["val_accuracy"] for c in acc["configs"]}
    return fig


def _config_name(params: dict) -> str:
    return f"lr={params['learning_rate']:g} w={params['width']} b={params['batch_size']}"


def paired_ratio(num: dict | None, den: dict | None, key: str) -> tuple[float | None, list[float] | None, str]:
    """``num[key] / den[key]`` for two systems' figures, as (value, per-repeat ratios, how).

    When both have per-repeat figures for the same repeats, the value is the median of the
    per-repeat ratios (repeat r over repeat r: a drift of the machine between repeats falls
    on both); otherwise (the repeats differ, e.g. one run failed) it is the ratio of the two
    medians, with no per-repeat list.  (None, None, why) when either figure is missing.  Pure.
    """
    num, den = num or {}, den or {}
    if num.get(key) is None or den.get(key) is None:
        return None, None, "missing"
    a = {p["repeat"]: p.get(key) for p in num.get("per_repeat") or []}
    b = {p["repeat"]: p.get(key) for p in den.get("per_repeat") or []}
    if a and set(a) == set(b) and all(a[r] is not None and b[r] not in (None, 0) for r in a):
        per = [a[r] / b[r] for r in sorted(a)]
        return statistics.median(per), per, f"median of {len(per)} paired repeat(s)"
    if not a or not b:
        why = "ratio of medians (no per-repeat figures)"
    else:
        why = f"ratio of medians: the repeats differ (repeats {sorted(r + 1 for r in a)} against {sorted(r + 1 for r in b)})"
    return _ratio(num[key], den[key]), None, why


def summarise(figures: dict[str, dict], sim: dict | None, workers: int, fixed_cost: dict | None = None) -> dict:
    """The summary.json figures from per-system figures, the simulation's summary and the
    fixed-cost figures (``{framework: benchmarks.fixed_cost figures}``) (pure)."""
    def f(system, key):
        return figures.get(system, {}).get(key)

    ratios, per_repeat, how = {}, {}, {}
    for name, (a, b, key) in PAIRED_RATIOS.items():
        value, per, why = paired_ratio(figures.get(a), figures.get(b), key)
        if name.startswith("throughput_over_"):  # MOP rows/s over p x one sequential process
            value = value / workers if value is not None else None
            per = [v / workers for v in per] if per is not None else None
        ratios[name] = value
        if value is not None:
            how[name] = why
            if per is not None:
                per_repeat[name] = per
    fixed = fixed_cost or {}

    def fc(framework, key):
        return (fixed.get(framework) or {}).get(key)

    def gap(system):
        a, b = f(system, "best_val_accuracy"), f("sequential", "best_val_accuracy")
        return 100 * (a - b) if a is not None and b is not None else None

    horovod, ddp = ratios["horovod_over_mop"], ratios["ddp_over_mop"]
    allreduce = "horovod_over_mop" if horovod is not None else "ddp_over_mop"
    if allreduce in how:
        how["allreduce_over_mop"] = how[allreduce]
    if allreduce in per_repeat:
        per_repeat["allreduce_over_mop"] = per_repeat[allreduce]
    summary = {
        "mop_busy_fraction": f("mop", "utilisation"),
        "allreduce_over_mop": horovod if horovod is not None else ddp,
        "horovod_over_mop": horovod,
        "ddp_over_mop": ddp,
        "horovod_over_mop_torch": ratios["horovod_over_mop_torch"],
        "ddp_over_mop_torch": ratios["ddp_over_mop_torch"],
        "ps_over_mop": ratios["ps_over_mop"],
        "mop_over_task_parallel": ratios["mop_over_task_parallel"],
        # Both in raw float32 bytes: p copies of the training rows (+ the validation rows) against
        # MOP's one partitioned copy of the same rows (its Parquet store is in the table beside).
        "task_parallel_storage_over_mop": _ratio(f("task-parallel", "bytes_stored"), f("mop", "raw_data_bytes")),
        "accuracy_gap_vs_sequential": gap("mop"),
        "model_averaging_accuracy_gap_vs_sequential": gap("model-averaging"),
        "scheduler_makespan_over_lower_bound": (sim or {}).get("scheduler_makespan_over_lower_bound"),
        "randomized_makespan_over_lower_bound": (sim or {}).get("randomized_makespan_over_lower_bound"),
        "scheduler_decision_ms": (sim or {}).get("scheduler_decision_ms"),
        "hop_share": f("mop", "hop_share"),
        "build_share": f("mop", "build_share"),
        "throughput_over_physical_limit": ratios["throughput_over_physical_limit"],
        "throughput_over_p_sequential_fit": ratios["throughput_over_p_sequential_fit"],
        "ray_tune_over_mop": ratios["ray_tune_over_mop"],
        "ray_tune_asha_over_mop_asha": ratios["ray_tune_asha_over_mop_asha"],
        "ray_tune_busy_fraction": f("ray-tune", "utilisation"),
        # Peak resident memory summed over each system's processes (RSS: shared pages once per process).
        "ray_tune_memory_over_mop": _ratio(f("ray-tune", "peak_rss_bytes"), f("mop", "peak_rss_bytes")),
        "ray_tune_asha_memory_over_mop_asha": _ratio(f("ray-tune-asha", "peak_rss_bytes"), f("mop-asha", "peak_rss_bytes")),
        "sub_epoch_fixed_cost_ms": fc("keras", "sub_epoch_fixed_cost_ms"),
        "sub_epoch_fixed_cost_ms_torch": fc("torch", "sub_epoch_fixed_cost_ms"),
        "visit_fixed_cost_ms": fc("keras", "visit_fixed_cost_ms"),
        "visit_fixed_cost_ms_torch": fc("torch", "visit_fixed_cost_ms"),
        "ratios_per_repeat": per_repeat,
        "ratios_how": how,
    }
    return summary


def goal_status(key: str, value) -> str:
    if key not in GOALS or value is None:
        return "" if value is not None else "n/a"
    op, target = GOALS[key]
    ok = {">=": value >= target, "<=": value <= target, "abs<=": abs(value) <= target}[op]
    return f"{'met' if ok else 'MISSED'} ({op.replace('abs', '|x| ')} {target:g})"


# ---------------------------------------------------------------------------- output

def _fmt(v, digits=3):
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _mb(v):
    return "n/a" if v is None else f"{v / 1e6:.1f}"


def markdown(report: dict) -> str:
    figs, summary = report["figures"], report["summary"]
    prof = report["profile"]
    lines = [
        f"Workload: {report['configs']} MLP configurations (64 -> w -> w -> 10, Adam; lr {{1e-3, 3e-3}} x width "
        f"{{128, 256}} x batch {{32, 128}}); time on {prof['rows']:,} generated rows x 64 features (25% validation), "
        f"{prof['epochs']} epoch(s); accuracy on digits after {prof['accuracy_epochs']} epochs; "
        f"p = {report['workers']} workers x 1 thread; {prof['repeats']} interleaved repeat(s), medians "
        f"(ratios: medians of the per-repeat ratios; [min-max] over the repeats).",
        "",
        "| system | s / epoch (all configs) | vs MOP | vs MOP (torch) | utilisation | data stored MB | "
        "moved MB / epoch | peak memory GB | digits acc best (mean) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    mop_epoch = figs.get("mop", {}).get("epoch_s")
    mop_torch_epoch = figs.get("mop-torch", {}).get("epoch_s")
    for system in [s for s in SYSTEMS if s not in SEARCH_SYSTEMS]:
        if system in report["unavailable"]:
            lines.append(f"| {LABELS[system]} | unavailable: {report['unavailable'][system][:90]} | | | | | | | |")
            continue
        g = figs.get(system)
        if not g or "epoch_s" not in g:
            if system in report["systems"]:
                lines.append(f"| {LABELS[system]} | failed (see errors) | | | | | | | |")
            continue
        moved = _mb(g.get("bytes_moved_per_epoch")) + (" (measured)" if str(g.get("bytes_moved_how", "")).startswith("measured")
                                                      else " (computed)" if g.get("bytes_moved_per_epoch") else "")
        acc = (f"{g['best_val_accuracy']:.4f} ({g['mean_val_accuracy']:.4f})" if g.get("best_val_accuracy") is not None
               else f"not run: {ACCURACY_SKIPPED[system]}" if system in prof.get("accuracy_skip", ())
               else "n/a")
        lines.append(f"| {LABELS[system]} | {g['epoch_s']:.1f}{_spread(g.get('epoch_s_all'))} | "
                     f"{_fmt(_ratio(g['epoch_s'], mop_epoch), 2)} | "
                     f"{_fmt(_ratio(g['epoch_s'], mop_torch_epoch), 2)} | {_fmt(g.get('utilisation'), 2)} | "
                     f"{_mb(g.get('bytes_stored'))} | {moved} | {_gb(g.get('peak_rss_bytes'))} | {acc} |")
    lines += search_lines(report)
    lines += ["", "| figure | value | goal |", "|---|---:|---|"]
    for key in SUMMARY_KEYS:
        lines.append(f"| {key} | {_fmt(summary.get(key), 4)} | {goal_status(key, summary.get(key))} |")
    spread = summary.get("ratios_per_repeat") or {}
    if any(len(v) > 1 for v in spread.values()):
        lines += ["", "Per-repeat ratios (repeat 1, 2, ...; the figure above is their median):", ""]
        lines += [f"- {k}: {', '.join(f'{v:.3f}' for v in vals)}" for k, vals in spread.items()]
    lines += fixed_cost_lines(report.get("fixed_cost") or {})
    if report["errors"]:
        lines += ["", "Errors:"] + [f"- {k}: {v}" for k, v in report["errors"].items()]
    others = {k: v for k, v in report["unavailable"].items() if k not in SYSTEMS}
    if others:
        lines += ["", "Unavailable:"] + [f"- {k}: {v}" for k, v in others.items()]
    return "\n".join(lines)


def _gb(v):
    return f"{v / 1e9:.2f}" if v is not None else "n/a"


def search_lines(report: dict) -> list[str]:
    """Markdown lines for the ASHA searches (timed as a whole), when any was asked for."""
    asked = [s for s in SEARCH_SYSTEMS if s in report["systems"]]
    if not asked:
        return []
    figs = report["figures"]
    lines = ["", f"ASHA over the same configurations (grace period 1, reduction factor 3, at most "
             f"{report['profile'].get('asha_epochs')} epochs), on the time data, timed as a whole:", "",
             "| search | s (whole search) | vs MOP ASHA | configuration-epochs trained | utilisation | "
             "peak memory GB | best val accuracy |", "|---|---:|---:|---:|---:|---:|---:|"]
    mop = figs.get("mop-asha", {}).get("search_s")
    for system in asked:
        if system in report["unavailable"]:
            lines.append(f"| {LABELS[system]} | unavailable: {report['unavailable'][system][:90]} | | | | | |")
            continue
        g = figs.get(system) or {}
        if g.get("search_s") is None:
            lines.append(f"| {LABELS[system]} | failed (see errors) | | | | | |")
            continue
        lines.append(f"| {LABELS[system]} | {g['search_s']:.1f}{_spread(g.get('search_s_all'))} | "
                     f"{_fmt(_ratio(g['search_s'], mop), 2)} | "
                     f"{_fmt(g.get('config_epochs'), 0)} | {_fmt(g.get('utilisation'), 2)} | "
                     f"{_gb(g.get('peak_rss_bytes'))} | {_fmt(g.get('search_best_val_accuracy'), 4)} |")
    return lines


def fixed_cost_lines(fixed: dict) -> list[str]:
    """Markdown lines for the fixed-cost figures (``{framework: figures}``): the parts of a visit."""
    if not fixed:
        return []
    lines = ["", "Fixed cost of a one-batch visit (benchmarks.fixed_cost; medians in ms, train + eval, "
             "first epoch left out):", "",
             "| framework | compute (sub_epoch_fixed_cost_ms) | load | save | load + compute + save "
             "(visit_fixed_cost_ms) | load after a hop / from cache | driver's end - start |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for framework, g in fixed.items():
        tr, ev = g.get("train", {}), g.get("eval", {})
        load = (tr.get("load_ms") or 0) + (ev.get("load_ms") or 0)
        lines.append(f"| {framework} | {_fmt(g.get('sub_epoch_fixed_cost_ms'), 2)} | {_fmt(load, 2)} | "
                     f"{_fmt(tr.get('save_ms'), 2)} | {_fmt(g.get('visit_fixed_cost_ms'), 2)} | "
                     f"{_fmt(g.get('load_moved_ms'), 2)} / {_fmt(g.get('load_cached_ms'), 2)} | "
                     f"{_fmt(g.get('visit_wall_ms'), 2)} |")
    return lines


def plot(report: dict, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = report["figures"]
    shown = [s for s in SYSTEMS if figs.get(s, {}).get("epoch_s") is not None]
    paths = []
    if shown:
        fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
        labels = [SHORT[s] for s in shown]
        axes[0].barh(labels, [figs[s]["epoch_s"] for s in shown], color="tab:blue")
        axes[0].set_xlabel("seconds per epoch (all configurations)")
        axes[0].invert_yaxis()
        axes[1].barh(labels, [figs[s].get("utilisation") or 0 for s in shown], color="tab:green")
        axes[1].set_xlabel("worker utilisation")
        axes[1].set_xlim(0, 1.05)
        axes[1].invert_yaxis()
        axes[2].barh(labels, [figs[s].get("best_val_accuracy") or 0 for s in shown], color="tab:orange")
        axes[2].set_xlabel("digits: best validation accuracy")
        axes[2].set_xlim(0.5, 1.0)
        axes[2].invert_yaxis()
        for ax in axes[1:]:
            ax.set_yticklabels([])
        fig.suptitle(f"p = {report['workers']} workers x 1 thread; {report['profile']['rows']:,} rows")
        fig.tight_layout()
        path = out_dir / "systems.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(str(path))
    curves = {s: figs[s]["curves"] for s in shown if figs[s].get("curves")}
    if curves:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        import numpy as np

        for s, per_config in curves.items():
            mean = np.mean([v for v in per_config.values()], axis=0)
            ax.plot(range(1, len(mean) + 1), mean, marker="o", label=LABELS[s])
        ax.set_xlabel("epoch")
        ax.set_ylabel("digits validation accuracy (mean over configurations)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / "accuracy.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(str(path))
    searched = [s for s in SEARCH_SYSTEMS if figs.get(s, {}).get("search_s") is not None]
    if searched:  # the ASHA table
        fig, axes = plt.subplots(1, 2, figsize=(10, 3))
        labels = [SHORT[s] for s in searched]
        axes[0].barh(labels, [figs[s]["search_s"] for s in searched], color="tab:blue")
        axes[0].set_xlabel("seconds for the whole ASHA search")
        axes[1].barh(labels, [figs[s].get("config_epochs") or 0 for s in searched], color="tab:gray")
        axes[1].set_xlabel("configuration-epochs trained")
        axes[1].set_yticklabels([])
        for ax in axes:
            ax.invert_yaxis()
        fig.tight_layout()
        path = out_dir / "asha.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(str(path))
    net = report.get("network") or {}
    if net:  # the emulated-network table: ratio to MOP per system per network
        fig, ax = plt.subplots(figsize=(8, 3.8))
        systems = [s for s in NETWORK_SYSTEMS if any(f"{s}_over_mop" in row for row in net.values())]
        width = 0.8 / max(len(net), 1)
        for k, (rate, row) in enumerate(net.items()):
            ax.bar([i + k * width for i in range(len(systems))], [row.get(f"{s}_over_mop") or 0 for s in systems],
                   width, label=rate)
        ax.set_xticks([i + width * (len(net) - 1) / 2 for i in range(len(systems))], [SHORT[s] for s in systems])
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_ylabel("s / epoch over MOP's (hops charged at the rate)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / "network.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(str(path))
    return paths


def seeds_all(profile: dict, workers: int, out_dir: Path, log=print) -> dict:
    """``benchmarks.accuracy_seeds`` over ``profile["seeds"]`` seeds (at ``accuracy_epochs`` and
    at 4 epochs, or fewer when the budget is shorter), under ``out_dir/seeds``.  Returns
    {"summary": figures for summary.json (or why not run), "table", "errors", "unavailable"}."""
    if not profile.get("seeds"):
        return {"summary": {"not_run": "--seeds 0 (the default but for --full; python -m benchmarks.accuracy_seeds "
                                       "runs it alone)"}}
    from benchmarks import accuracy_seeds

    epochs = profile["accuracy_epochs"]
    log(f"# accuracy over {profile['seeds']} seeds, {epochs} epochs ...")
    rep = accuracy_seeds.run_seeds(profile["seeds"], epochs, min(4, epochs), workers, out_dir=out_dir / "seeds",
                                   log=log, max_configs=profile.get("max_configs"))
    summary = {"seeds": rep["seeds"], "epochs": epochs, "short": min(4, epochs), **accuracy_seeds.headline(rep)}
    return {"summary": summary, "table": accuracy_seeds.markdown(rep),
            "errors": {f"accuracy_seeds {k}": v for k, v in rep["errors"].items()},
            "unavailable": {f"accuracy_seeds {k}": v for k, v in rep["unavailable"].items()}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true",
                      help="1 repeat, 50k rows, 1 timed epoch, 4 accuracy epochs (not for MOP on Spark) (default)")
    mode.add_argument("--full", action="store_true", help="3 repeats, 2 timed epochs, 10 accuracy epochs")
    mode.add_argument("--smoke", action="store_true", help="tiny data, 2 configurations: does every engine run?")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rows", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--accuracy-epochs", type=int)
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--only", default=",".join(SYSTEMS), help=f"comma-separated subset of {','.join(SYSTEMS)}")
    parser.add_argument("--no-sim", action="store_true", help="skip the scheduler simulation")
    parser.add_argument("--no-fixed-cost", action="store_true",
                        help="skip benchmarks.fixed_cost (sub_epoch_fixed_cost_ms is then n/a)")
    parser.add_argument("--network", default=None,
                        help="comma-separated link rates (e.g. 10gbit,1gbit): also run the data-parallel systems "
                             "in an emulated network (root and iproute2; default: none, --full: 10gbit,1gbit)")
    parser.add_argument("--seeds", type=int, default=None,
                        help="also the accuracy gap over N seeds with 95%% intervals (benchmarks.accuracy_seeds; "
                             "default: --full 5, otherwise 0)")
    parser.add_argument("--name", default=None, help="results folder name (default: a timestamp)")
    parser.add_argument("--out", default=None, help="results root (default benchmarks/results)")
    args = parser.parse_args(argv)
    profile_name = "full" if args.full else "smoke" if args.smoke else "quick"
    profile = dict(PROFILES[profile_name])
    for key in ("rows", "epochs", "accuracy_epochs", "repeats", "seeds"):
        if getattr(args, key) is not None:
            profile[key] = getattr(args, key)
    systems = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown:
        parser.error(f"--only names unknown systems {unknown}; choose from {list(SYSTEMS)}")
    if profile["seeds"] == 1 or profile["seeds"] < 0:
        parser.error(f"--seeds: expected 0 (not run) or at least 2 (an interval needs two draws), got {profile['seeds']}")
    if profile["rows"] < 100 * args.workers or args.workers < 1 or profile["repeats"] < 1:
        parser.error("need --workers >= 1, --repeats >= 1 and at least 100 rows per worker")
    name = args.name or time.strftime(f"%Y%m%d-%H%M%S-{profile_name}")
    out_dir = Path(args.out or HERE / "results") / name
    out_dir.mkdir(parents=True, exist_ok=True)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    started = time.perf_counter()
    sim = None
    if not args.no_sim:
        from benchmarks import scheduler_sim

        log("# scheduler simulation ...")
        sim_report = scheduler_sim.run(quick=profile_name != "full", seeds=1 if profile_name == "smoke" else None)
        sim = sim_report["summary"]
        (out_dir / "scheduler_sim.json").write_text(json.dumps(sim_report, indent=1))
        scheduler_sim.plot(sim_report["rows"], str(out_dir / "scheduler_sim.png"))
        sim_table = scheduler_sim.markdown(sim_report["rows"], sim_report["decision"])
    fixed = {"figures": {}, "errors": {}, "unavailable": {"fixed-cost": "skipped (--no-fixed-cost)"}}
    if not args.no_fixed_cost:
        fixed = fixed_cost_all(args.workers, profile["fixed_cost_epochs"], out_dir, log=log)
    raw = run_all(profile, args.workers, systems, out_dir, log=log)
    rates = [r.strip() for r in (args.network if args.network is not None
                                 else "10gbit,1gbit" if profile_name == "full" else "").split(",") if r.strip()]
    net = (network_all(rates, [s for s in systems if s in NETWORK_SYSTEMS], profile, args.workers, out_dir, log=log)
           if rates else {})
    seeds = seeds_all(profile, args.workers, out_dir, log=log)
    from benchmarks import workload as wl

    figures = {s: system_figures(s, runs, args.workers) for s, runs in raw["runs"].items() if runs}
    errors = {**fixed["errors"], **raw["errors"], **net.get("errors", {}), **seeds.get("errors", {})}
    report = {
        "profile": {"name": profile_name, **profile}, "workers": args.workers, "systems": systems,
        "configs": profile.get("max_configs") or len(wl.configurations()),
        "figures": figures, "summary": summarise(figures, sim, args.workers, fixed["figures"]),
        "fixed_cost": fixed["figures"],
        "network": network_summary(net, figures, args.workers), "accuracy_seeds": seeds["summary"],
        "unavailable": {**raw["unavailable"], **fixed["unavailable"], **net.get("unavailable", {}),
                        **seeds.get("unavailable", {})}, "errors": errors,
        "wall_s": round(time.perf_counter() - started, 1), "host": {"cpus": os.cpu_count()},
    }
    table = markdown(report) + "\n".join([""] + network_lines(report["network"]))
    if seeds.get("table"):
        table += "\n\nAccuracy gap over seeds (benchmarks/accuracy_seeds.py):\n\n" + seeds["table"]
    if sim is not None:
        table += "\n\nScheduler simulation (makespan / lower bound; see benchmarks/scheduler_sim.py):\n\n" + sim_table
    report["plots"] = plot(report, out_dir) + ([str(out_dir / "scheduler_sim.png")] if sim is not None else [])
    summary = {**report["summary"], "network": report["network"], "accuracy_seeds": report["accuracy_seeds"],
               "repeats": profile["repeats"], "profile": profile_name, "workers": args.workers,
               "unavailable": report["unavailable"], "errors": report["errors"], "wall_s": report["wall_s"]}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out_dir / "results.json").write_text(json.dumps({**report, "raw": raw["runs"]}, indent=1) + "\n")
    (out_dir / "table.md").write_text(table + "\n")
    print(table)
    print(f"\nresults: {out_dir} ({report['wall_s']:.0f} s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
