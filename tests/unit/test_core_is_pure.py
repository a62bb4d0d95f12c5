"""``cerebro.core`` must import without any heavy framework.

Each check runs in a fresh interpreter (``sys.executable -c ...``) whose ``sys.meta_path``
starts with a finder that refuses tensorflow, keras, pyspark, torch, hyperopt, pyarrow and
pandas; then every module found under the package directory is imported.  A core module
that imports one of those (directly or through anything it imports) fails the test.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BLOCKED = ("tensorflow", "keras", "pyspark", "torch", "hyperopt", "pyarrow", "pandas")

# Run as: python -c CHECKER <sys.path entry> <package>.  Exit 0 iff every module imported.
CHECKER = textwrap.dedent(
    """
    import importlib, importlib.abc, os, sys, traceback

    BLOCKED = set(%r)

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ImportError("cerebro.core must stay pure: import of %%r blocked" %% name)
            return None

    sys.meta_path.insert(0, Blocker())
    root, package = sys.argv[1], sys.argv[2]
    sys.path.insert(0, root)
    pkg_dir = os.path.join(root, *package.split("."))
    names = []
    # Walk the directory (not pkgutil, which would import while walking): only modules that
    # exist are imported, so modules not written yet are simply skipped.
    for dirpath, dirnames, filenames in os.walk(pkg_dir):
        dirnames[:] = sorted(d for d in dirnames if os.path.isfile(os.path.join(dirpath, d, "__init__.py")))
        rel = os.path.relpath(dirpath, root).replace(os.sep, ".")
        for f in sorted(filenames):
            if f.endswith(".py"):
                names.append(rel if f == "__init__.py" else rel + "." + f[:-3])
    failed = []
    for name in names:
        try:
            importlib.import_module(name)
        except BaseException:
            failed.append(name)
            sys.stderr.write("FAILED %%s\\n%%s\\n" %% (name, traceback.format_exc()))
    leaked = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
    if leaked:
        sys.stderr.write("blocked modules loaded anyway: %%s\\n" %% leaked)
    sys.stderr.write("IMPORTED %%s\\n" %% " ".join(names))
    sys.exit(1 if failed or leaked else 0)
    """
    % (BLOCKED,)
)


def run_checker(root: Path, package: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", CHECKER, str(root), package],
        cwd=str(root),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_core_module_imports_without_heavy_frameworks():
    r = run_checker(REPO, "cerebro.core")
    assert r.returncode == 0, r.stderr
    imported = r.stderr.rsplit("IMPORTED ", 1)[1].split()
    # The modules this suite relies on are among those checked.
    assert {"cerebro.core", "cerebro.core.events", "cerebro.core.mop"} <= set(imported)
    assert r.stdout == "", "importing cerebro.core must not print"


def test_checker_catches_an_impure_module(tmp_path: Path):
    """The check is not vacuous: a core module importing a blocked package fails it."""
    core = tmp_path / "fakepkg" / "core"
    (core / "sub").mkdir(parents=True)
    (tmp_path / "fakepkg" / "__init__.py").write_text("")
    (core / "__init__.py").write_text("")
    (core / "fine.py").write_text("import numpy\nimport heapq\n")
    (core / "sub" / "__init__.py").write_text("")
    (core / "sub" / "deep.py").write_text("from pandas import DataFrame\n")
    r = run_checker(tmp_path, "fakepkg.core")
    assert r.returncode != 0
    assert "FAILED fakepkg.core.sub.deep" in r.stderr
    assert "FAILED fakepkg.core.fine" not in r.stderr

    (core / "sub" / "deep.py").write_text("x = 1\n")
    (core / "bad.py").write_text("import tensorflow as tf\n")
    r = run_checker(tmp_path, "fakepkg.core")
    assert r.returncode != 0 and "FAILED fakepkg.core.bad" in r.stderr

    (core / "bad.py").write_text("import torch.nn\n")
    r = run_checker(tmp_path, "fakepkg.core")
    assert r.returncode != 0 and "FAILED fakepkg.core.bad" in r.stderr

    (core / "bad.py").unlink()
    r = run_checker(tmp_path, "fakepkg.core")
    assert r.returncode == 0, r.stderr
