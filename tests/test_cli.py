"""The `fedimod` command as an admin meets it: help texts, hashing files, importing banks, the demo."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web

from fedimod.cli import main
from fedimod.cli.demo import generate_image, jpeg_bytes

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


def test_hash_recurses_directories_in_order_with_types_and_text_format(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "b" / "c").mkdir(parents=True)
    (tmp_path / "b" / "c" / "2.jpg").write_bytes(jpeg_bytes(generate_image(2)))
    (tmp_path / "b" / "1.jpg").write_bytes(jpeg_bytes(generate_image(1)))
    frames = [generate_image(n, size=(120, 90)) for n in range(6)]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=80)
    (tmp_path / "a.gif").write_bytes(out.getvalue())
    assert main(["hash", "--types", "pdq,md5", "--max-frames", "3", str(tmp_path)]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [Path(r["path"]).relative_to(tmp_path).as_posix() for r in records] == ["a.gif", "b/1.jpg", "b/c/2.jpg"]
    assert all(set(r) >= {"pdq", "pdq_quality", "md5"} and "phash" not in r and "sha256" not in r for r in records)
    assert records[0]["frames"] == 3 and len(records[0]["pdq_frames"]) == 3
    assert records[0]["pdq_frames"][0] == records[0]["pdq"]
    assert main(["hash", "--format", "text", str(tmp_path / "b" / "1.jpg"), str(tmp_path / "missing.png")]) == 0
    good, bad = capsys.readouterr().out.splitlines()
    assert good.split("\t")[1] == "jpeg" and f"pdq={records[1]['pdq']}" in good and "quality=" in good
    assert bad.endswith("ERROR unreadable: No such file or directory")


def test_hash_rejects_an_unknown_type(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["hash", "--types", "pdq,ahash", "x.jpg"])
    assert exit_info.value.code == 2 and "unknown signal type(s) ahash" in capsys.readouterr().err


async def test_hash_fetches_urls_through_the_private_address_guard(capsys: pytest.CaptureFixture[str]) -> None:
    image = jpeg_bytes(generate_image(3))

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=image, content_type="image/jpeg")

    app = web.Application()
    app.router.add_get("/a.jpg", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/a.jpg"
    try:
        assert await asyncio.to_thread(main, ["hash", url]) == 1  # loopback: refused, the only input
        (refused,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert refused["error"].startswith("blocked_address")
        assert await asyncio.to_thread(main, ["hash", "--allow-host", "127.0.0.1", url]) == 0
        (fetched,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    finally:
        await runner.cleanup()
    assert fetched["md5"] == hashlib.md5(image).hexdigest() and fetched["format"] == "jpeg"


@pytest.mark.parametrize(("name", "content", "message"), [
    ("big.csv", "signal_type,signal_str,collab,category,tags\npdq," + "a" * 140_000 + ",x,POSITIVE_CLASS,csam\n",
     "line 2: not CSV: field larger than field limit"),
    ("deep.jsonl", '{"a":' * 100_000 + "1" + "}" * 100_000 + "\n", "line 1: not JSON: nested too deeply"),
    ("huge.jsonl", '{"signal_type": "pdq"}\n{"signal_type": "pdq", "value": ' + "9" * 5000 + "}\n",
     "line 2: not JSON: Exceeds the limit"),
])
def test_hostile_bank_files_get_line_numbered_errors_not_tracebacks(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, content: str, message: str) -> None:
    config = write_config(tmp_path)
    (tmp_path / name).write_text(content)
    assert main(["bank", "import", str(tmp_path / name), "-c", str(config)]) == 2
    err = capsys.readouterr().err
    assert message in err and "nothing imported" in err


def test_export_into_a_missing_directory_and_run_on_a_corrupted_store_say_what_is_wrong(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    missing = tmp_path / "no" / "such" / "out.jsonl"
    assert main(["bank", "export", "--bank", "x", "-o", str(missing), "-c", str(config)]) == 2
    assert f"cannot write {missing}: No such file or directory" in capsys.readouterr().err
    (tmp_path / "s.sqlite3").write_bytes(os.urandom(8192))
    result = subprocess.run([sys.executable, "-m", "fedimod", "run", "-c", str(config)], capture_output=True,
                            text=True, timeout=60, env=dict(os.environ, FEDIMOD_TOKEN="x"), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"cannot use store {tmp_path / 's.sqlite3'}: file is not a database" in result.stderr


def test_bank_stats_shows_entries_per_bank_and_type_and_the_index_plan(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import random

    config = write_config(tmp_path)
    rng = random.Random(3)
    lines = [f"pdq {rng.getrandbits(256):064x} csam" for _ in range(5000)]
    lines += [f"md5 {rng.getrandbits(128):032x} spam" for _ in range(7)]
    (tmp_path / "bank.txt").write_text("\n".join(lines) + "\n")
    assert main(["bank", "import", str(tmp_path / "bank.txt"), "--bank", "hub", "-c", str(config)]) == 0
    (tmp_path / "allow.txt").write_text(f"pdq {rng.getrandbits(256):064x} other\n")
    assert main(["bank", "import", str(tmp_path / "allow.txt"), "--bank", "ok", "--allowlist", "-c", str(config)]) == 0
    assert main(["bank", "disable", "--bank", "ok", "-c", str(config)]) == 0
    capsys.readouterr()
    assert main(["bank", "stats", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "hub                  block  enabled   md5      7" in out
    assert "hub                  block  enabled   pdq      5000" in out
    assert "ok                   allow  disabled  pdq      1" in out
    assert "index of 5007 active entries" in out  # the disabled allowlist is not matched against
    assert "pdq      5000 entries within 31 bits: 16 chunks of 16 bits probed at radius 1" in out
    assert "md5      7 entries, exact lookup" in out


def test_fedimod_hash_records_each_bad_input_and_carries_on(tmp_path: Path) -> None:
    from tests import hostile

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for n, (name, data, _type) in enumerate(hostile.special() + hostile.mutants(60, seed=5)):
        (corpus / f"{n:03d}-{name}").write_bytes(data)
    (corpus / "zzz-good.jpg").write_bytes(jpeg_bytes(generate_image(12)))
    result = subprocess.run([sys.executable, "-m", "fedimod", "hash", str(corpus), "--timeout", "10"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == len(list(corpus.iterdir()))  # one record per file, in order, none lost
    assert records[-1]["path"].endswith("zzz-good.jpg") and len(records[-1]["pdq"]) == 64
    by_name = {Path(r["path"]).name.split("-", 1)[1]: r for r in records}
    assert by_name["dimension_bomb"]["error"].startswith("too_many_pixels")
    assert by_name["not_an_image"]["error"].startswith("unsupported_format")
    assert "truncated" in by_name["truncated_gif"]["unhashable"] and by_name["truncated_gif"]["frames"] >= 2
    assert "Traceback" not in result.stderr
