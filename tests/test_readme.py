"""README's two set-up commands: they make their own venv (Debian 12's python3 refuses pip
outside one), and .ci/run runs the test command exactly as README gives it."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _setup_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return [line.strip() for line in section.splitlines() if line.startswith("    ")]


def test_readme_starts_with_a_run_and_a_test_command_that_use_a_venv() -> None:
    run, test = _setup_commands()[:2]
    for command in (run, test):
        assert command.startswith("python3 -m venv .venv && "), command
        # Every python, pip or isocache after the venv is created is the venv's own.
        for step in command.split("&&")[1:]:
            assert step.strip().startswith(".venv/bin/"), step
    assert "isocache serve" in run and "pytest" in test


def test_ci_runs_exactly_the_readme_test_command() -> None:
    test = _setup_commands()[1]
    ci_lines = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()]
    assert test in ci_lines


def test_the_project_stands_alone() -> None:
    """Rationale lives in docs/ARCHITECTURE.md, never as a pointer outside the repository."""
    pointers = [
        f"{path.relative_to(ROOT)}:{number}"
        for folder in ("isocache", "docs", "bench", "contrib")
        for path in (ROOT / folder).rglob("*")
        if path.is_file() and path.suffix in {".py", ".md", ".toml", ".service", ".json"}
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if "../shared" in line or "shared/DESIGN" in line
    ]
    assert pointers == []
