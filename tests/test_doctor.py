"""`fedimod doctor` against the sandbox: green on a good setup, and the right fix for each fault."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from fedimod.cli import main
from fedimod.cli.demo import jpeg_bytes
from fedimod.sandbox import Sandbox
from tests.helpers import BOT_SCOPES, bank_images
from tests.test_pipeline import BANNED


def write_config(tmp_path: Path, sandbox: Sandbox) -> Path:
    path = tmp_path / "fedimod.toml"
    path.write_text(f"""
[instance]
base_url = "{sandbox.base_url}"
token_env = "FEDIMOD_DOCTOR_TOKEN"
[store]
path = "{tmp_path / 'store.sqlite3'}"
[ops]
listen = "127.0.0.1:0"
""")
    return path


async def doctor(capsys: pytest.CaptureFixture[str], config: Path, token: str) -> tuple[int, str]:
    os.environ["FEDIMOD_DOCTOR_TOKEN"] = token
    try:
        code = await asyncio.to_thread(main, ["doctor", "-c", str(config)])
    finally:
        del os.environ["FEDIMOD_DOCTOR_TOKEN"]
    return code, capsys.readouterr().out


async def test_doctor_passes_on_a_good_setup_and_names_the_fix_for_each_fault(
        sandbox: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, sandbox)
    await bank_images(tmp_path / "store.sqlite3", [jpeg_bytes(BANNED)])
    bot, token = sandbox.create_account("fedimod", role="moderator", scopes=BOT_SCOPES)
    poster, _ = sandbox.create_account("dave", domain="bad.example")
    sandbox.post_status(poster.id, "hello", media=[jpeg_bytes(BANNED)])

    code, out = await doctor(capsys, config, token)
    assert code == 0, out
    assert "FAIL" not in out and "'auto' picks websocket" in out and "checks passed" in out

    code, out = await doctor(capsys, config, "not-a-token")
    assert code == 1 and "FAIL  token: 401" in out and "export it as $FEDIMOD_DOCTOR_TOKEN" in out

    thin = sandbox.create_token(bot.id, ("read",))
    code, out = await doctor(capsys, config, thin)
    assert code == 1 and "FAIL  scopes: missing write:reports, admin:read:reports" in out
    assert "create a new token with these scopes too: write:reports admin:read:reports" in out

    sandbox.accounts[bot.id].domain_blocks.add("bad.example")  # a moderator who blocked a bad instance
    code, out = await doctor(capsys, config, token)
    assert code == 1 and "FAIL  bot account filters" in out and "domain blocks (bad.example)" in out
    assert "hide 1 of the last 1 public posts" in out and "remove its blocks, mutes and domain blocks" in out
    sandbox.accounts[bot.id].domain_blocks.clear()

    sandbox.block_websocket = True
    code, out = await doctor(capsys, config, token)
    assert code == 1 and "FAIL  streaming (WebSocket): upgrade answered 400" in out
    assert "pass WebSocket upgrades" in out and "'auto' picks sse" in out and "ok    streaming (SSE)" in out
