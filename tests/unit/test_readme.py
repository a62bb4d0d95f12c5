"""The README's two fresh-machine commands stay true: CI runs the test one verbatim."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _commands() -> list[str]:
    return [line.strip() for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("python3.11 -m venv")]


def test_readme_gives_exactly_two_fresh_machine_commands():
    cmds = _commands()
    assert len(cmds) == 2, cmds
    assert cmds[0].endswith("cerebro demo")
    assert "pytest" in cmds[1]


def test_ci_runs_the_readme_test_command_verbatim():
    ci_lines = [l.strip() for l in (ROOT / ".ci" / "run").read_text().splitlines() if l.strip() and not l.startswith("#")]
    # The README's test command, verbatim; after it only the benchmark step (setup of the
    # baseline engines and their smoke tests, see benchmarks/).
    assert _commands()[1] in ci_lines
    after = ci_lines[ci_lines.index(_commands()[1]) + 1:]
    assert all(l.startswith((".venv/bin/python -m benchmarks.", ".venv/bin/python -m pytest benchmarks/")) for l in after), after
