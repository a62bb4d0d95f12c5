"""How time and memory grow with the number of configurations and with the rows: MOP against
task parallelism and Ray Tune, one epoch of every configuration per point.

Points: 8, 16 and 32 configurations at ``--base-rows`` rows (25,000), and 25k, 50k and 100k
rows at 8 configurations (the 8 are the benchmark's grid; 16 and 32 add learning rates, see
``benchmarks.workload.configurations``).  Each system runs all its points in one engine process
(``benchmarks.baselines``), so process start-up is paid once and a point's figures are its
job's: ``span_s`` (from every worker ready to the last evaluation) and ``peak_rss_bytes``
(resident memory summed over the engine's processes during the job).

Slopes, per system: the exponent b of time ~ a * n**b fitted by least squares on log-log (b = 1
is linear growth), and the linear rate (seconds per added configuration, per 10,000 rows;
MB of peak memory per added configuration, per 10,000 rows).

Usage:
    python -m benchmarks.scaling [--systems mop,task-parallel,ray-tune] [--out DIR] [--quick]
``--quick``: 8 and 16 configurations and 25k, 50k rows (a smaller check of the same figures).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

SYSTEMS = ("mop", "task-parallel", "ray-tune")
CONFIGS = (8, 16, 32)
ROWS = (25000, 50000, 100000)


def points(configs=CONFIGS, rows=ROWS, base_rows=None) -> list[tuple[int, int]]:
    """(configurations, rows) points: the configurations at the smallest rows, the rows at 8."""
    base_rows = base_rows or min(rows)
    out = [(c, base_rows) for c in configs]
    out += [(min(configs), r) for r in rows if (min(configs), r) not in out]
    return out


def fit_power(xs, ys) -> float | None:
    """Exponent b of y ~ a x**b (least squares on logs); None with fewer than 2 usable points."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x and y and x > 0 and y > 0]
    if len(pts) < 2 or len({p[0] for p in pts}) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sum((p[0] - mx) ** 2 for p in pts)


def fit_line(xs, ys) -> float | None:
    """Slope of y = a + b x (least squares); None with fewer than 2 usable points."""
    pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
    if len(pts) < 2 or len({p[0] for p in pts}) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sum((p[0] - mx) ** 2 for p in pts)


def slopes(rows_of: dict[tuple[int, int], dict], configs, rows, base_rows) -> dict:
    """The slopes of one system from its points ``{(configs, rows): {"span_s", "peak_rss_bytes"}}`` (pure)."""
    by_c = [(c, rows_of.get((c, base_rows)) or {}) for c in configs]
    by_r = [(r, rows_of.get((min(configs), r)) or {}) for r in rows]
    mb = 1e6
    return {
        "time_exponent_configs": fit_power([c for c, _ in by_c], [p.get("span_s") for _, p in by_c]),
        "time_exponent_rows": fit_power([r for r, _ in by_r], [p.get("span_s") for _, p in by_r]),
        "s_per_config": fit_line([c for c, _ in by_c], [p.get("span_s") for _, p in by_c]),
        "s_per_10k_rows": _scale(fit_line([r for r, _ in by_r], [p.get("span_s") for _, p in by_r]), 1e4),
        "memory_mb_per_config": _scale(fit_line([c for c, _ in by_c],
                                                [_div(p.get("peak_rss_bytes"), mb) for _, p in by_c]), 1),
        "memory_mb_per_10k_rows": _scale(fit_line([r for r, _ in by_r],
                                                  [_div(p.get("peak_rss_bytes"), mb) for _, p in by_r]), 1e4),
    }


def _div(a, b):
    return a / b if a is not None else None


def _scale(v, k):
    return v * k if v is not None else None


def run_scaling(systems=SYSTEMS, configs=CONFIGS, rows=ROWS, workers: int = 2, out_dir: Path | None = None,
                log=print, timeout: float = 1800) -> dict:
    """Every system at every point (one engine process per system); returns the report (also
    written as ``scaling.json`` with ``scaling.png`` under ``out_dir`` when given)."""
    from benchmarks import run, workload as wl

    avail = run.availability(workers)
    base_rows = min(rows)
    pts = points(configs, rows, base_rows)
    report: dict = {"workers": workers, "configs": list(configs), "rows": list(rows), "base_rows": base_rows,
                    "points": {}, "slopes": {}, "errors": {}, "unavailable": {}}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cerebro-bench-scaling-") as tmp_name:
        tmp = Path(tmp_name)
        data = {}
        for r in sorted({r for _, r in pts}):
            x, y = wl.make_arrays(r)
            data[r] = tmp / f"rows-{r}"
            wl.write_dataset(data[r], x, y, wl.validation_mask(len(x)), shards=workers, replicas=workers)
        log_dir = (out_dir or tmp) / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        for system in systems:
            if avail.get(system):
                report["unavailable"][system] = avail[system]
                log(f"# {system}: unavailable: {avail[system]}")
                continue
            jobs = [{"tag": f"c{c}-r{r}", "data": str(data[r]), "epochs": 1, "seed": 2020, "scheduler": "dynamic",
                     "num_configs": c} for c, r in pts]
            log(f"# scaling: {system}, {len(jobs)} points ...")
            res = run.run_engine(system, jobs, workers, tmp, timeout, log_dir)
            if "error" in res:
                report["errors"][system] = res["error"]
                log(f"#   {system} FAILED: {res['error']}")
                continue
            got = {}
            for (c, r), job in zip(pts, res["jobs"]):
                got[(c, r)] = {"configs": c, "rows": r, "span_s": job["span_s"],
                               "peak_rss_bytes": job.get("peak_rss_bytes")}
            report["points"][system] = list(got.values())
            report["slopes"][system] = slopes(got, configs, rows, base_rows)
            log(f"#   {system}: " + ", ".join(f"{c}x{r // 1000}k {p['span_s']:.1f} s" for (c, r), p in got.items()))
    report["wall_s"] = time.perf_counter() - started
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "scaling.json").write_text(json.dumps(report, indent=1))
        report["plot"] = plot(report, out_dir / "scaling.png")
    return report


def plot(report: dict, path: Path) -> str | None:
    if not report["points"]:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks.run import SHORT

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    base, c0 = report["base_rows"], min(report["configs"])
    for system, pts in report["points"].items():
        by_c = sorted((p["configs"], p) for p in pts if p["rows"] == base)
        by_r = sorted((p["rows"], p) for p in pts if p["configs"] == c0)
        label = SHORT.get(system, system)
        axes[0][0].plot([c for c, _ in by_c], [p["span_s"] for _, p in by_c], marker="o", label=label)
        axes[0][1].plot([r for r, _ in by_r], [p["span_s"] for _, p in by_r], marker="o", label=label)
        axes[1][0].plot([c for c, _ in by_c], [(p["peak_rss_bytes"] or 0) / 1e9 for _, p in by_c], marker="o",
                        label=label)
        axes[1][1].plot([r for r, _ in by_r], [(p["peak_rss_bytes"] or 0) / 1e9 for _, p in by_r], marker="o",
                        label=label)
    axes[0][0].set(xlabel=f"configurations ({base:,} rows)", ylabel="seconds for one epoch of all")
    axes[0][1].set(xlabel=f"rows ({c0} configurations)", ylabel="seconds for one epoch of all")
    axes[1][0].set(xlabel=f"configurations ({base:,} rows)", ylabel="peak memory, GB (RSS summed)")
    axes[1][1].set(xlabel=f"rows ({c0} configurations)", ylabel="peak memory, GB (RSS summed)")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Scaling, p = {report['workers']} workers x 1 thread")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def markdown(report: dict) -> str:
    lines = ["| system | " + " | ".join(f"{p[0]} x {p[1] // 1000}k s" for p in points(report["configs"], report["rows"],
                                                                                        report["base_rows"]))
             + " | time exponent: configs, rows | s per config | s per 10k rows | MB per config | MB per 10k rows |"]
    n = len(points(report["configs"], report["rows"], report["base_rows"]))
    lines.append("|---|" + "---:|" * (n + 5))
    for system, pts in report["points"].items():
        s = report["slopes"][system]
        f = lambda v, d=2: "n/a" if v is None else f"{v:.{d}f}"  # noqa: E731
        lines.append(f"| {system} | " + " | ".join(f"{p['span_s']:.1f}" for p in pts)
                     + f" | {f(s['time_exponent_configs'])}, {f(s['time_exponent_rows'])} | {f(s['s_per_config'])} | "
                     f"{f(s['s_per_10k_rows'])} | {f(s['memory_mb_per_config'], 0)} | {f(s['memory_mb_per_10k_rows'], 0)} |")
    for k, v in {**report["unavailable"], **report["errors"]}.items():
        lines.append(f"| {k} | {v[:120]} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="8, 16 configurations; 25k, 50k rows")
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results/scaling-<time>)")
    args = parser.parse_args(argv)
    configs, rows = ((8, 16), (25000, 50000)) if args.quick else (CONFIGS, ROWS)
    out = Path(args.out) if args.out else Path(__file__).resolve().parent / "results" / time.strftime("scaling-%Y%m%d-%H%M%S")
    report = run_scaling([s for s in args.systems.split(",") if s], configs, rows, args.workers, out)
    print(markdown(report))
    print(f"results: {out} ({report['wall_s']:.0f} s)")
    return 0 if not report["errors"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
