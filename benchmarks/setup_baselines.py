"""Install the baseline engines the benchmarks compare MOP against (never part of cerebro's install).

What it does, each step idempotent (a step already done is skipped):

1. ``torch==2.13.0``, the CPU wheel (refused if pip would resolve a CUDA build), for the
   PyTorch DDP baseline and Horovod's PyTorch binding;
2. ``tf-keras==2.21.0`` with ``--no-deps`` (its dependency on ``tensorflow`` would pull the
   572 MB GPU package beside ``tensorflow-cpu``): ``model.fit`` under ``TF_USE_LEGACY_KERAS=1``
   for the parameter-server and Horovod-Keras baselines;
3. ``ray[tune]==2.60.0`` (the newest release the registry serves) for the Ray Tune baseline,
   constrained to the numpy, pandas, pyarrow, protobuf and grpcio already installed;
4. Horovod 0.28.1 over Gloo, built from the sdist with the fixes it needs on this stack
   (``patch_horovod``): the XLA ops file includes XLA headers TensorFlow 2.21 no longer ships,
   though the code behind them is GPU-only, so its body is compiled only with ``HAVE_GPU``;
   PyTorch 2.13 needs C++17 where Horovod forces C++14 (its top-level CMake, its torch target)
   or C++11 (Gloo).  Built with ``pip wheel --no-build-isolation`` against the installed
   torch, with the PyTorch binding only (the benchmark's Horovod engine is PyTorch; the
   TensorFlow binding would triple the build): 4.7 minutes on a quiet 2-core machine (13 with
   the TensorFlow binding too), into a wheel cache outside the repository (``~/.cache/cerebro-benchmarks/``, keyed by the Python,
   torch and TensorFlow versions; ``CEREBRO_BENCH_CACHE`` moves it), then installed; a fresh
   virtual environment on the same machine installs the cached wheel in seconds.  If the build
   fails, Horovod is reported as unavailable (the reason and the log are kept) and everything
   else carries on; so does a build that runs past ``--horovod-timeout`` (25 minutes).

The outcome is written to ``benchmarks/.build/baselines.json`` (``{"horovod": {"available":
bool, "reason": str, "log": path}, ...}``), which the benchmark and the smoke tests read.

Usage: python -m benchmarks.setup_baselines [--skip-horovod] [--force-horovod] [--horovod-timeout S]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUILD = HERE / ".build"
STATUS = BUILD / "baselines.json"
TORCH = "torch==2.13.0"
TF_KERAS = "tf-keras==2.21.0"
#: The newest Ray the registry serves (2026-12); pinned so that a new release cannot change the baseline.
RAY_TUNE = "ray[tune]==2.60.0"
#: Installed packages Ray must not move (it accepts the versions cerebro's install chose).
RAY_KEEP = ("numpy", "pandas", "pyarrow", "protobuf", "grpcio")
HOROVOD = "0.28.1"
HOROVOD_RUNTIME_DEPS = ["cloudpickle", "psutil", "pyyaml", "packaging", "cffi>=1.4.0"]


def _pip(*args: str, check: bool = True, log=None, timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run pip; past ``timeout`` seconds its whole process group (compilers included) is killed."""
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    print("+", " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, text=True, stdout=log, stderr=subprocess.STDOUT if log else None,
                            start_new_session=True)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    if check and proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    return subprocess.CompletedProcess(cmd, proc.returncode)


def _probe(code: str, env: dict | None = None) -> tuple[bool, str]:
    """Run ``code`` in a fresh interpreter (imports must not pollute this one)."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})})
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip()


def read_status() -> dict:
    try:
        return json.loads(STATUS.read_text())
    except (OSError, ValueError):
        return {}


def _write_status(status: dict) -> None:
    BUILD.mkdir(parents=True, exist_ok=True)
    STATUS.write_text(json.dumps(status, indent=2) + "\n")


# ---------------------------------------------------------------------------- torch, tf-keras

def install_torch() -> dict:
    ok, out = _probe("import torch; assert torch.version.cuda is None, torch.version.cuda; print(torch.__version__)")
    if ok and out.splitlines()[-1].startswith("2.13.0"):
        return {"available": True, "version": out.splitlines()[-1]}
    # Check what pip would take before taking it: a CUDA build would drag in gigabytes.
    report = BUILD / "torch-resolve.json"
    _pip("install", "--dry-run", "--quiet", "--report", str(report), TORCH)
    plan = json.loads(report.read_text())
    for item in plan.get("install", []):
        meta = item.get("metadata", {})
        name = meta.get("name", "").lower()
        if name == "torch" and "+cpu" not in meta.get("version", ""):
            raise SystemExit(f"pip would install torch {meta.get('version')} (not a +cpu build) from "
                             f"{item.get('download_info', {}).get('url')}; refusing")
        if name.startswith("nvidia-"):
            raise SystemExit(f"pip would install {name}: a CUDA build of torch; refusing")
    _pip("install", TORCH)
    ok, out = _probe("import torch; assert torch.version.cuda is None; print(torch.__version__)")
    return {"available": ok, "version": out.splitlines()[-1] if ok else None, **({} if ok else {"reason": out[-500:]})}


def install_tf_keras() -> dict:
    ok, out = _probe("import tf_keras; print(tf_keras.__version__)")
    if not ok:
        _pip("install", "--no-deps", TF_KERAS)
        ok, out = _probe("import tf_keras; print(tf_keras.__version__)")
    return {"available": ok, "version": out.splitlines()[-1] if ok else None, **({} if ok else {"reason": out[-500:]})}


def install_ray_tune() -> dict:
    """``ray[tune]`` for the Ray Tune baseline, constrained to the installed numpy, pandas,
    pyarrow, protobuf and grpcio (a newer one pulled in would change what cerebro runs on)."""
    probe = "import ray, ray.tune; print(ray.__version__)"
    ok, out = _probe(probe)
    if not ok:
        from importlib import metadata

        pins = []
        for name in RAY_KEEP:
            try:
                pins.append(f"{name}=={metadata.version(name)}")
            except metadata.PackageNotFoundError:
                pass
        BUILD.mkdir(parents=True, exist_ok=True)
        constraints = BUILD / "ray-constraints.txt"
        constraints.write_text("\n".join(pins) + "\n")
        _pip("install", RAY_TUNE, "-c", str(constraints), check=False)
        ok, out = _probe(probe)
    return {"available": ok, "version": out.splitlines()[-1] if ok else None, **({} if ok else {"reason": out[-500:]})}


# ---------------------------------------------------------------------------- horovod

def patch_horovod(src: Path) -> list[str]:
    """Apply the build fixes Horovod 0.28.1 needs with TF 2.21 and PyTorch 2.13; returns what changed.

    Each fix is a literal replacement that must match exactly once, so a different sdist fails
    loudly here instead of building something else.
    """
    fixes = [
        # XLA headers are gone from TF 2.21's wheel; everything they serve is inside #if HAVE_GPU.
        # (Only compiled with the TensorFlow binding, which this build leaves out; kept so that
        # HOROVOD_WITH_TENSORFLOW=1 builds too.)
        ("horovod/tensorflow/xla_mpi_ops.cc", "#if TENSORFLOW_VERSION >= 2006000000\n",
         "#if TENSORFLOW_VERSION >= 2006000000 && HAVE_GPU\n"),
        # PyTorch 2.13's headers need C++17.
        ("CMakeLists.txt", "set(CMAKE_CXX_STANDARD 14)\n", "set(CMAKE_CXX_STANDARD 17)\n"),
        ("horovod/torch/CMakeLists.txt", "    set(CMAKE_CXX_STANDARD 14)\n", "    set(CMAKE_CXX_STANDARD 17)\n"),
        ("third_party/gloo/CMakeLists.txt", "-std=c++11", "-std=c++17"),
    ]
    done = []
    for rel, old, new in fixes:
        path = src / rel
        text = path.read_text()
        if new in text and old not in text:
            done.append(f"{rel}: already patched")
            continue
        if text.count(old) != 1:
            raise RuntimeError(f"patch for {rel} expected exactly one {old!r}, found {text.count(old)}")
        path.write_text(text.replace(old, new))
        done.append(f"{rel}: {old.strip()!r} -> {new.strip()!r}")
    return done


HOROVOD_PROBE = ("import horovod, horovod.torch as ht; "
                 "assert ht.gloo_built(), 'built without Gloo'; "
                 "print(horovod.__version__)")


def wheel_cache() -> Path:
    """Where a built Horovod wheel is kept between fresh virtual environments on this machine
    (outside the repository: CI clones afresh, and a rebuild takes minutes)."""
    base = os.environ.get("CEREBRO_BENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "cerebro-benchmarks")
    ok, out = _probe("import sys, torch; "
                     "print(f'py{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__}')")
    tag = out.splitlines()[-1] if ok else "unknown"
    return Path(base) / f"horovod-{HOROVOD}-{tag}"


def install_horovod(force: bool = False, timeout: float = 1500) -> dict:
    log_path = BUILD / "horovod-build.log"
    previous = read_status().get("horovod", {})
    if not force:
        ok, out = _probe(HOROVOD_PROBE)
        if ok and out.splitlines()[-1].startswith(HOROVOD):
            return {"available": True, "version": out.splitlines()[-1], "log": str(log_path),
                    "fixes": previous.get("fixes", []), "source": "already installed"}
    BUILD.mkdir(parents=True, exist_ok=True)
    cache = wheel_cache()
    started = time.time()
    fixes: list[str] = previous.get("fixes", [])
    with open(log_path, "a" if not force else "w") as log:
        try:
            _pip("install", *HOROVOD_RUNTIME_DEPS, log=log)
            wheels = sorted(cache.glob("horovod-*.whl")) if not force else []
            source = f"cached wheel {wheels[-1]}" if wheels else "built from the sdist"
            if not wheels:
                dl = BUILD / "sdist"
                shutil.rmtree(dl, ignore_errors=True)
                _pip("download", "--no-deps", "--no-binary", ":all:", f"horovod=={HOROVOD}", "-d", str(dl), log=log)
                archive = next(dl.glob("horovod-*.tar.gz"))
                src = BUILD / f"horovod-{HOROVOD}"
                shutil.rmtree(src, ignore_errors=True)
                with tarfile.open(archive) as tar:
                    tar.extractall(BUILD, filter="data")
                fixes = patch_horovod(src)
                log.write("fixes:\n" + "\n".join(fixes) + "\n")
                log.flush()
                os.environ.update({
                    "HOROVOD_WITH_PYTORCH": "1", "HOROVOD_WITHOUT_TENSORFLOW": "1", "HOROVOD_WITHOUT_MXNET": "1",
                    "HOROVOD_WITHOUT_MPI": "1", "HOROVOD_WITH_GLOO": "1", "HOROVOD_CPU_OPERATIONS": "GLOO",
                    "MAKEFLAGS": f"-j{os.cpu_count() or 2}",
                })
                cache.mkdir(parents=True, exist_ok=True)
                try:
                    proc = _pip("wheel", "--no-build-isolation", "--no-deps", "--no-cache-dir", "-v", "-w",
                                str(cache), str(src), check=False, log=log, timeout=timeout)
                except subprocess.TimeoutExpired:
                    for partial in cache.glob("horovod-*.whl"):
                        partial.unlink()
                    return {"available": False, "reason": f"build stopped after {timeout:.0f} s (--horovod-timeout)",
                            "log": str(log_path), "build_s": round(time.time() - started), "fixes": fixes}
                if proc.returncode != 0:
                    return {"available": False, "reason": f"pip wheel exited {proc.returncode}: {_first_error(log_path)}",
                            "log": str(log_path), "build_s": round(time.time() - started), "fixes": fixes}
                (cache / "fixes.json").write_text(json.dumps(fixes))
                wheels = sorted(cache.glob("horovod-*.whl"))
            elif (cache / "fixes.json").exists():
                fixes = json.loads((cache / "fixes.json").read_text())
            proc = _pip("install", "--no-deps", "--force-reinstall", str(wheels[-1]), check=False, log=log)
            if proc.returncode != 0:
                return {"available": False, "reason": f"pip install of the wheel exited {proc.returncode}: "
                        f"{_first_error(log_path)}", "log": str(log_path), "fixes": fixes}
        except Exception as exc:  # noqa: BLE001 - any failure means "unavailable", with the reason
            log.write(f"\nsetup failed: {type(exc).__name__}: {exc}\n")
            return {"available": False, "reason": f"{type(exc).__name__}: {exc}", "log": str(log_path), "fixes": fixes}
    seconds = round(time.time() - started)
    ok, out = _probe(HOROVOD_PROBE)
    if not ok:
        return {"available": False, "reason": f"installed but does not import: {out[-400:]}", "log": str(log_path),
                "build_s": seconds, "fixes": fixes, "source": source}
    return {"available": True, "version": out.splitlines()[-1], "log": str(log_path), "build_s": seconds,
            "fixes": fixes, "source": source}


def _first_error(log_path: Path) -> str:
    """The first compiler/CMake error line of a build log (what a person would look for)."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return "no build log"
    for line in lines:
        if re.search(r"(error:|Error:|CMake Error|fatal error)", line):
            return line.strip()[:300]
    return (lines[-1].strip()[:300] if lines else "empty build log")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-horovod", action="store_true", help="do not build Horovod (reported as unavailable)")
    parser.add_argument("--force-horovod", action="store_true", help="rebuild Horovod even if it imports")
    parser.add_argument("--horovod-timeout", type=float, default=1500,
                        help="seconds the Horovod build may take before it is reported unavailable (default 1500)")
    args = parser.parse_args(argv)
    BUILD.mkdir(parents=True, exist_ok=True)
    status = read_status()
    status["torch"] = install_torch()
    status["tf_keras"] = install_tf_keras()
    status["ray_tune"] = install_ray_tune()
    _write_status(status)
    if args.skip_horovod:
        status["horovod"] = {"available": False, "reason": "not built (--skip-horovod)"}
    elif not status["torch"]["available"]:
        status["horovod"] = {"available": False, "reason": "torch is unavailable"}
    else:
        print(f"# building Horovod {HOROVOD} (log: {BUILD / 'horovod-build.log'})", flush=True)
        status["horovod"] = install_horovod(force=args.force_horovod, timeout=args.horovod_timeout)
    _write_status(status)
    for name, st in status.items():
        state = "available" if st.get("available") else f"UNAVAILABLE ({st.get('reason')})"
        print(f"{name}: {state}", flush=True)
    # Horovod failing to build is a reported outcome, not a setup failure; torch, tf-keras and
    # Ray Tune are required.
    return 0 if all(status[k]["available"] for k in ("torch", "tf_keras", "ray_tune")) else 1


if __name__ == "__main__":
    sys.exit(main())
