"""The layer contracts of docs/architecture.md hold, and they would catch a stage importing config
or production code importing the sandbox (checked on a copy of the package, broken on purpose)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def lint_imports(where: Path) -> subprocess.CompletedProcess[str]:
    # The console script installed beside this interpreter (import-linter is a test dependency).
    script = Path(sys.executable).parent / "lint-imports"
    return subprocess.run([str(script), "--no-cache"], cwd=where, capture_output=True, text=True, timeout=120)


def copy_of_the_package(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "fedimod", tmp_path / "fedimod", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def test_the_package_keeps_its_layer_contracts() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 3 kept, 0 broken." in result.stdout


@pytest.mark.parametrize(("module", "line", "broken"), [
    ("media/fetch.py", "import fedimod.config", "fedimod.media is not allowed to import fedimod.config"),
    ("match/index.py", "import fedimod.act.policy", "fedimod.match is not allowed to import fedimod.act"),
    ("models.py", "import fedimod.store", "fedimod.models is not allowed to import fedimod.store"),
    ("act/executor.py", "import fedimod.sandbox", "production code never imports the sandbox"),
    ("sandbox/state.py", "import fedimod.models", "the sandbox is an independent Mastodon"),
], ids=["stage-imports-config", "stage-imports-stage", "models-imports-store", "stage-imports-sandbox",
        "sandbox-imports-models"])
def test_a_forbidden_import_breaks_a_contract(tmp_path: Path, module: str, line: str, broken: str) -> None:
    copy = copy_of_the_package(tmp_path)
    target = copy / "fedimod" / module
    target.write_text(target.read_text(encoding="utf-8") + f"\n{line}  # noqa\n", encoding="utf-8")
    result = lint_imports(copy)
    assert result.returncode != 0
    assert broken in result.stdout.replace("\n", " ")
