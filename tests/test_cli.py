"""The `fedimod` command as an admin meets it: help texts, hashing files, importing banks, the demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedimod.cli import main
from fedimod.demo import generate_image, jpeg_bytes

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = [[], ["run"], ["demo"], ["bank"], ["bank", "import"], ["bank", "list"], ["status"], ["hash"], ["sandbox"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "fedimod")
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main([*command, "--help"])
    assert excinfo.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: fedimod")
    assert len(out.splitlines()) > 4


def write_config(tmp_path: Path) -> Path:
    config = tmp_path / "fedimod.toml"
    store = tmp_path / "s.sqlite3"
    config.write_text(f'[instance]\nbase_url = "https://mastodon.example"\n[store]\npath = "{store}"\n')
    return config


def test_bank_import_with_a_bad_row_imports_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    bank = tmp_path / "bank.txt"
    bank.write_text("pdq " + "a5" * 32 + " csam\nmd5 nothex\n")
    assert main(["bank", "import", str(bank), "--config", str(config)]) == 2
    assert "line 2" in capsys.readouterr().err
    assert main(["bank", "list", "--config", str(config)]) == 0
    assert "no banks" in capsys.readouterr().out

    bank.write_text("pdq " + "a5" * 32 + " csam\nmd5 " + "0f" * 16 + "\n")
    assert main(["bank", "import", str(bank), "--config", str(config), "--bank", "hub"]) == 0
    assert "imported 2 new entries into block bank" in capsys.readouterr().out
    assert main(["bank", "import", str(bank), "--config", str(config), "--bank", "hub"]) == 0
    assert "imported 0 new entries" in capsys.readouterr().out  # importing twice adds nothing
    assert main(["bank", "list", "--config", str(config)]) == 0
    listing = capsys.readouterr().out
    assert "hub" in listing and "csam" in listing
    assert main(["status", "--config", str(config)]) == 0
    assert "bank entries   2" in capsys.readouterr().out


def test_run_without_token_fails_with_a_clear_message(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDIMOD_TOKEN", raising=False)
    assert main(["run", "--config", str(write_config(tmp_path))]) == 2
    assert "FEDIMOD_TOKEN is empty or unset" in capsys.readouterr().err


def test_hash_prints_one_json_object_per_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "a.jpg"
    good.write_bytes(jpeg_bytes(generate_image(1)))
    bad = tmp_path / "b.jpg"
    bad.write_bytes(b"not an image")
    assert main(["hash", str(good), str(bad)]) == 0  # non-zero only if every input failed
    first, second = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert len(first["pdq"]) == 64 and first["pdq_quality"] >= 50 and len(first["md5"]) == 32
    assert second["error"].startswith("unsupported_format")
    assert main(["hash", str(bad)]) == 1


@pytest.mark.slow
def test_demo_reports_exactly_the_altered_copies() -> None:
    result = subprocess.run([sys.executable, "-m", "fedimod", "demo", "--posts", "24"], capture_output=True,
                            text=True, timeout=180, cwd=ROOT, env=dict(os.environ))
    assert result.returncode == 0, result.stdout + result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("demo OK: 24 posts")
    assert "false reports 0, missed 0, duplicates 0" in last
