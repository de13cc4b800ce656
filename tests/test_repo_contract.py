"""The README's two commands and .ci/run must stay in step (the brief requires it at every commit)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    return re.findall(r"```sh\n(.+?)\n```", (ROOT / "README.md").read_text())


def test_readme_opens_with_demo_then_test_command() -> None:
    demo, tests = _readme_commands()[:2]
    assert demo.endswith("fedimod demo")
    assert "pytest" in tests


def test_ci_runs_exactly_the_readme_test_command() -> None:
    test_command = _readme_commands()[1]
    ci_lines = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()]
    assert test_command in ci_lines
