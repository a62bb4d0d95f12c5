"""The documentation runs: every code block of README.md and docs/*.md is executed, and every
relative link points to a file (and heading) that exists.

The convention, stated for contributors at the top of docs/index.md:

- ```python blocks are executed. All the python blocks of one file run in order, like notebook
  cells, in one fresh Python subprocess (``sys.executable``) whose working directory is a
  fresh temporary directory. A failure names the file, the block's first line and the
  subprocess's traceback and stderr.
- ```bash / ```sh / ```console blocks: each command line (in ``console`` blocks, each line
  starting with ``$ ``) runs with bash in the same directory, with this interpreter's bin
  directory first on PATH, at its place in the file's order (after the python blocks above
  it). Not executed, and listed by the test: the README's fresh-machine commands (lines
  starting ``python3.11 -m venv``: CI runs the test one, tests/unit/test_readme.py checks
  both), ``pip install`` lines (CI's install step covers installation) and the benchmark
  commands of docs/benchmarks.md (minutes to hours each, run from the repository root; their
  modules and options are checked against ``--help`` instead).
- ```text, ```json and ```yaml blocks are not code: output samples, signatures, file trees.
  Every fence must name one of these languages.

One test per file (``test_doc_runs[docs/x.md]``), marked slow; the link check is quick.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DOC_IDS = [str(p.relative_to(ROOT)) for p in DOC_FILES]

PYTHON = {"python"}
SHELL = {"bash", "sh", "console"}
NOT_CODE = {"text", "json", "yaml"}

#: Seconds one python block or one shell command may take before the file's run fails.
BLOCK_TIMEOUT = 600
#: How much of the subprocess's stderr a failure message shows (its end).
STDERR_TAIL = 6000

_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")


@dataclass(frozen=True)
class Block:
    lang: str
    line: int      # 1-based line number of the block's first code line
    code: str


@dataclass(frozen=True)
class Command:
    line: int      # 1-based line number in the doc file
    text: str


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a markdown file, in order (indented fences are dedented)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence = len(m["indent"]), m["fence"]
        lang = (m["info"].split() or [""])[0].lower()
        body: list[str] = []
        j = i + 1
        while j < len(lines):
            stripped = lines[j].strip()
            if stripped.startswith(fence) and not stripped.strip(fence[0]):
                break
            body.append(lines[j][indent:] if not lines[j][:indent].strip() else lines[j])
            j += 1
        assert j < len(lines), f"{_rel(path)}:{i + 1}: code fence never closed"
        out.append(Block(lang, i + 2, "\n".join(body) + "\n"))
        i = j + 1
    return out


def commands(block: Block) -> list[Command]:
    """The command lines of a shell block: backslash continuations joined, blank lines and
    comments dropped; in a ``console`` block only the lines after a ``$ `` prompt."""
    out: list[Command] = []
    pending: list[str] = []
    start = 0
    for offset, raw in enumerate(block.code.splitlines()):
        line = raw.rstrip()
        if not pending:
            if block.lang == "console":
                if not line.startswith("$ "):
                    continue   # output shown in the doc
                line = line[2:]
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            start = block.line + offset
        if line.endswith("\\"):
            pending.append(line[:-1])
            continue
        pending.append(line)
        out.append(Command(start, " ".join(p.strip() for p in pending)))
        pending = []
    assert not pending, f"line {start}: a command ends with a backslash continuation"
    return out


# ------------------------------------------------------------------------------------ skips

_PROJECT_INSTALL = re.compile(r"^(\S*/)?pip install( -e)? ('?cerebro-mop(\[[a-z,]+\])?'?|'?\.(\[[a-z,]+\])?'?)$")
_BENCHMARK = re.compile(r"^(\.venv/bin/)?python -m (?P<what>benchmarks\.\w+|pytest benchmarks/\S*)(?P<args>.*?)\s*(#.*)?$")


def skip_reason(path: Path, command: str) -> str | None:
    """Why a shell line is not executed, or None when it is."""
    if command.startswith("python3.11 -m venv"):
        return "fresh-machine setup (CI runs it, see .ci/run; tests/unit/test_readme.py checks it)"
    if re.match(r"^(\S*/)?pip install ", command):
        return "installation (CI's install step covers it)"
    if path.name == "benchmarks.md" and _BENCHMARK.match(command):
        return "benchmark run (minutes to hours, from the repository root); module and options checked with --help"
    return None


def _check_benchmark_line(command: str) -> None:
    """A benchmark command that is not run: its module exists and accepts every option it uses."""
    m = _BENCHMARK.match(command)
    assert m, command
    what = m["what"]
    if what.startswith("pytest "):
        target = ROOT / what.split(None, 1)[1]
        assert target.exists(), f"{command!r}: {target} does not exist"
        return
    module = what
    assert (ROOT / (module.replace(".", "/") + ".py")).exists(), f"{command!r}: no module {module}"
    done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{command!r}: `python -m {module} --help` failed:\n{done.stderr[-STDERR_TAIL:]}"
    for option in re.findall(r"(?<!\S)(--[a-z][a-z0-9-]*)", m["args"]):
        assert option in done.stdout, f"{command!r}: {module} has no option {option}:\n{done.stdout}"


def test_every_fence_names_a_known_language_and_only_known_kinds_of_lines_are_skipped(capsys):
    skipped: list[str] = []
    for path in DOC_FILES:
        for block in blocks(path):
            assert block.lang in PYTHON | SHELL | NOT_CODE, (
                f"{_rel(path)}:{block.line - 1}: a code fence must name its language, one of "
                f"{sorted(PYTHON | SHELL | NOT_CODE)} (python and shell blocks are executed by this test); "
                f"got {block.lang!r}"
            )
            if block.lang not in SHELL:
                continue
            for cmd in commands(block):
                reason = skip_reason(path, cmd.text)
                if reason is None:
                    continue
                skipped.append(f"{_rel(path)}:{cmd.line}: {cmd.text}  [{reason}]")
                if reason.startswith("fresh-machine"):
                    assert path.name == "README.md", f"{_rel(path)}:{cmd.line}: fresh-machine commands belong in README.md only"
                elif reason.startswith("installation"):
                    assert _PROJECT_INSTALL.match(cmd.text), (
                        f"{_rel(path)}:{cmd.line}: only installs of cerebro-mop (or its extras) go unexecuted; "
                        f"{cmd.text!r} must install nothing else and chain nothing after it"
                    )
    with capsys.disabled():
        print("\nShell lines the doc test does not execute:\n  " + "\n  ".join(skipped))
    fresh = [s for s in skipped if "python3.11 -m venv" in s]
    assert len(fresh) == 2, fresh   # the two that tests/unit/test_readme.py checks


# ------------------------------------------------------------------------------------ running

_KERNEL = r'''
"""Runs the python blocks sent on stdin (one JSON line each) in one shared __main__ namespace."""
import json, os, sys, traceback, types

results = os.fdopen(int(sys.argv[1]), "w")
main = types.ModuleType("__main__")   # a notebook-like __main__: no __file__, nothing of this script
main.__dict__["__builtins__"] = __builtins__
sys.modules["__main__"] = main
for request in sys.stdin:
    block = json.loads(request)
    print(f"--- doc test: python block at {block['file']}:{block['line']}", file=sys.stderr, flush=True)
    try:
        # Padded so that tracebacks give the doc file's own line numbers.
        exec(compile("\n" * (block["line"] - 1) + block["code"], block["file"], "exec"), main.__dict__)
        answer = {"ok": True}
    except BaseException:
        answer = {"ok": False, "error": traceback.format_exc()}
    sys.stdout.flush()
    sys.stderr.flush()
    results.write(json.dumps(answer) + "\n")
    results.flush()
'''


class Kernel:
    """One fresh Python subprocess for one doc file's python blocks."""

    def __init__(self, workdir: Path, logdir: Path, env: dict[str, str]) -> None:
        script = logdir.resolve() / "kernel.py"
        script.write_text(_KERNEL)
        self.stdout_path, self.stderr_path = logdir / "stdout.txt", logdir / "stderr.txt"
        read_fd, write_fd = os.pipe()
        with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(script), str(write_fd)], cwd=workdir, env=env, stdin=subprocess.PIPE,
                stdout=out, stderr=err, pass_fds=(write_fd,), text=True, start_new_session=True,
            )
        os.close(write_fd)
        self.results = os.fdopen(read_fd)

    def stderr_tail(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-STDERR_TAIL:]

    def run(self, path: Path, block: Block) -> str | None:
        """Execute one block; None when it ran, else the traceback."""
        try:
            self.proc.stdin.write(json.dumps({"file": str(path), "line": block.line, "code": block.code}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            return f"the Python subprocess died (exit status {self.proc.wait()})"
        ready, _, _ = select.select([self.results], [], [], BLOCK_TIMEOUT)
        if not ready:
            return f"timed out after {BLOCK_TIMEOUT} s"
        line = self.results.readline()
        if not line:
            return f"the Python subprocess died (exit status {self.proc.wait()})"
        answer = json.loads(line)
        return None if answer["ok"] else answer["error"]

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)   # our own session: the kernel and what it started
            self.proc.wait()
        self.results.close()


@pytest.mark.slow
@pytest.mark.parametrize("path", DOC_FILES, ids=DOC_IDS)
def test_doc_runs(path: Path, tmp_path: Path, capsys) -> None:
    workdir, logdir = tmp_path / "work", tmp_path / "log"
    workdir.mkdir()
    logdir.mkdir()
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    started = time.monotonic()
    kernel: Kernel | None = None
    ran: list[str] = []
    skipped: list[str] = []
    try:
        for block in blocks(path):
            if block.lang in PYTHON:
                if kernel is None:
                    kernel = Kernel(workdir, logdir, env)
                block_started = time.monotonic()
                error = kernel.run(path, block)
                if error is not None:
                    pytest.fail(
                        f"{_rel(path)}: the python block at line {block.line} failed:\n{error}\n"
                        f"--- stderr of the subprocess (end) ---\n{kernel.stderr_tail()}", pytrace=False)
                ran.append(f"python block at line {block.line}: {time.monotonic() - block_started:.1f} s")
            elif block.lang in SHELL:
                for cmd in commands(block):
                    reason = skip_reason(path, cmd.text)
                    if reason is not None:
                        skipped.append(f"line {cmd.line}: {cmd.text}  [{reason}]")
                        if reason.startswith("benchmark"):
                            _check_benchmark_line(cmd.text)
                        continue
                    command_started = time.monotonic()
                    done = subprocess.run(["bash", "-o", "pipefail", "-c", cmd.text], cwd=workdir, env=env,
                                          capture_output=True, text=True, timeout=BLOCK_TIMEOUT)
                    if done.returncode != 0:
                        pytest.fail(
                            f"{_rel(path)}:{cmd.line}: `{cmd.text}` exited with status {done.returncode}\n"
                            f"--- stdout ---\n{done.stdout[-STDERR_TAIL:]}\n--- stderr ---\n{done.stderr[-STDERR_TAIL:]}",
                            pytrace=False)
                    ran.append(f"line {cmd.line}: `{cmd.text}`: {time.monotonic() - command_started:.1f} s")
    finally:
        if kernel is not None:
            kernel.close()
        with capsys.disabled():
            print(f"\n{_rel(path)}: {time.monotonic() - started:.1f} s"
                  + "".join(f"\n  ran {r}" for r in ran) + "".join(f"\n  not executed: {s}" for s in skipped))


# ------------------------------------------------------------------------------------ links

_CODE_SPAN = re.compile(r"(`+).*?\1")
_LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _outside_code(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the lines outside fenced code blocks."""
    in_code = {b.line + k for b in blocks(path) for k in range(-1, len(b.code.splitlines()) + 1)}
    return [(n, text) for n, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if n not in in_code]


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a markdown file."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    for _, text in _outside_code(path):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", text)
        if not m:
            continue
        title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m[1])
        slug = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


@pytest.mark.parametrize("path", DOC_FILES, ids=DOC_IDS)
def test_relative_links_resolve(path: Path) -> None:
    outside = dict(_outside_code(path))
    lines = path.read_text(encoding="utf-8").splitlines()
    # The prose, code blocks blanked out (line numbers kept) and inline code removed.
    prose = "\n".join(_CODE_SPAN.sub("", outside.get(n, "")) for n in range(1, len(lines) + 1))
    broken = []
    for m in _LINK.finditer(prose):
        target, n = m[1], prose.count("\n", 0, m.start()) + 1
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):
            continue   # http:, https:, mailto: ...
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(f"line {n}: {target} (no file {dest})")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"line {n}: {target} (no heading #{anchor} in {_rel(dest)}; it has {sorted(anchors(dest))})")
    assert not broken, f"{_rel(path)} has broken relative links:\n  " + "\n  ".join(broken)


# ------------------------------------------------------------------------------------ API reference

_SIGNATURE = re.compile(r"^(?P<name>[A-Za-z_][\w.]*)\((?P<args>.*)\)$", re.S)


def _documented_signatures(path: Path) -> list[tuple[int, str, str]]:
    """(line, dotted name, argument text) of every ``Name(args)`` line of the text blocks
    (a signature may continue on indented lines until its parentheses close)."""
    out = []
    for block in blocks(path):
        if block.lang != "text":
            continue
        lines = block.code.splitlines()
        i = 0
        while i < len(lines):
            start, text = i, lines[i].strip()
            while text.count("(") > text.count(")") and i + 1 < len(lines):
                i += 1
                text += " " + lines[i].strip()
            i += 1
            m = _SIGNATURE.match(text)
            if m:
                out.append((block.line + start, m["name"], m["args"]))
    return out


def _resolve(dotted: str):
    import importlib

    import cerebro

    parts = dotted.split(".")
    if parts[0] == "cerebro":
        parts = parts[1:]
    obj, i = cerebro, 0
    while i < len(parts):
        try:
            obj = getattr(obj, parts[i])
        except AttributeError:
            obj = importlib.import_module(".".join(["cerebro", *parts[: i + 1]]))
        i += 1
    return obj


def _documented_parameters(args: str) -> list[tuple[str, str, object]]:
    import ast

    fn = ast.parse(f"def f({args}): pass").body[0].args
    out: list[tuple[str, str, object]] = []
    positional = fn.posonlyargs + fn.args
    defaults = [None] * (len(positional) - len(fn.defaults)) + list(fn.defaults)
    for a, d in zip(positional, defaults):
        out.append((a.arg, "positional", "<none>" if d is None else ast.literal_eval(d)))
    if fn.vararg:
        out.append((fn.vararg.arg, "*args", "<none>"))
    for a, d in zip(fn.kwonlyargs, fn.kw_defaults):
        out.append((a.arg, "keyword", "<none>" if d is None else ast.literal_eval(d)))
    if fn.kwarg:
        out.append(("**", "**kwargs", "<none>"))   # its name in the docs (**common) is free
    return out


def _actual_parameters(obj) -> list[tuple[str, str, object]]:
    import inspect

    params = list(inspect.signature(obj).parameters.values())
    if params and params[0].name == "self":
        params = params[1:]
    kinds = {inspect.Parameter.POSITIONAL_ONLY: "positional", inspect.Parameter.POSITIONAL_OR_KEYWORD: "positional",
             inspect.Parameter.VAR_POSITIONAL: "*args", inspect.Parameter.KEYWORD_ONLY: "keyword",
             inspect.Parameter.VAR_KEYWORD: "**kwargs"}
    out: list[tuple[str, str, object]] = []
    for p in params:
        default = "<none>" if p.default is inspect.Parameter.empty else p.default
        out.append(("**" if p.kind is inspect.Parameter.VAR_KEYWORD else p.name, kinds[p.kind], default))
    return out


def test_the_api_reference_gives_the_real_signatures_of_every_public_name() -> None:
    import cerebro

    api = ROOT / "docs" / "api.md"
    text = api.read_text(encoding="utf-8")
    undocumented = [name for name in cerebro.__all__ if f"`{name}" not in text and f"{name}(" not in text]
    assert not undocumented, f"docs/api.md does not describe these public names of cerebro: {undocumented}"
    signatures = _documented_signatures(api)
    assert len(signatures) > 20, signatures
    wrong = []
    for line, name, args in signatures:
        documented, actual = _documented_parameters(args), _actual_parameters(_resolve(name))
        if documented != actual:
            wrong.append(f"line {line}: {name}({args})\n    documented {documented}\n    in the code {actual}")
    assert not wrong, "docs/api.md's signatures differ from the code:\n" + "\n".join(wrong)
