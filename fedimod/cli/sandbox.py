"""`fedimod sandbox`: serve the bundled Mastodon-compatible test instance until interrupted."""

from __future__ import annotations

import asyncio

from fedimod.sandbox import Sandbox


async def serve(port: int) -> int:
    async with Sandbox(port=port) as sandbox:
        _admin, admin_token = sandbox.create_account(
            "admin", role="owner", scopes=("read", "write", "follow", "admin:read", "admin:write"))
        _user, user_token = sandbox.create_account("alice")
        print(f"sandbox instance at {sandbox.base_url}")
        print(f"admin token (read write admin:read admin:write): {admin_token}")
        print(f"user token (read write follow): {user_token}")
        print("Ctrl-C to stop", flush=True)
        await asyncio.Event().wait()
    return 0
