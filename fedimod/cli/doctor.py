"""`fedimod doctor`: the preflight an admin runs before `fedimod run`.

Each check talks to the real thing (the instance's API and streaming server, the store, the hash
pool) with harmless calls only, and says what to fix when it fails. Scopes are probed, since
Mastodon has no endpoint that lists a token's scopes: a call the token may not make answers
403 "outside the authorized scopes" before anything else is looked at, so an empty or
impossible request (a report with no account, an action on account 0) tells the scope apart
from the role ("This action is not allowed") without changing anything.

The bot account's own blocks, mutes, domain blocks and chosen languages are checked twice: by
listing them, and by comparing the public timeline as the bot sees it with the anonymous one,
since Mastodon drops from the bot's public stream whatever its own settings hide.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from fedimod.config import Config
from fedimod.errors import FedimodError, MalformedInput
from fedimod.ingest.parse import loads
from fedimod.signals import REGISTRY

SCOPE_ERROR = "outside the authorized scopes"
ROLE_ERROR = "not allowed"


@dataclass(frozen=True, slots=True, kw_only=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


@dataclass(slots=True)
class _Answer:
    status: int
    body: Any
    error: str


class _Instance:
    def __init__(self, session: aiohttp.ClientSession, config: Config) -> None:
        self.session = session
        self.base = config.instance.base_url.rstrip("/")
        self.auth = {"Authorization": f"Bearer {config.instance.token}"}
        self._timeout = aiohttp.ClientTimeout(total=min(config.instance.request_timeout_s, 15.0))

    async def call(self, method: str, path: str, params: dict[str, str] | None = None, *,
                   token: bool = True) -> _Answer:
        async with self.session.request(method, self.base + path, params=params or None,
                                        headers=self.auth if token else None, timeout=self._timeout) as resp:
            raw = await resp.read()
        try:
            body = loads(raw, path) if raw.strip() else None
        except MalformedInput:
            body = None
        error = str(body.get("error", "")) if isinstance(body, dict) else ""
        return _Answer(resp.status, body, error)


async def run_checks(config: Config) -> list[Check]:
    checks: list[Check] = []
    async with aiohttp.ClientSession(headers={"User-Agent": "fedimod doctor"}) as session:
        api = _Instance(session, config)
        for remote in (_token, _scopes, _timeline, _own_filters, _streaming):
            checks.extend(await _guard(remote.__name__.strip("_"), partial(remote, api, config)))
    for local in (_webhooks, _ops, _store, _banks, _hashing, _media_store):
        checks.extend(await _guard(local.__name__.strip("_"), partial(local, config)))
    return checks


async def _guard(name: str, run: Callable[[], Awaitable[list[Check]]]) -> list[Check]:
    try:
        return await run()
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return [Check(name=name, ok=False, detail=f"no answer: {type(exc).__name__}: {exc}",
                      fix="check [instance].base_url and that the instance is reachable from here")]
    except FedimodError as exc:
        return [Check(name=name, ok=False, detail=str(exc), fix="see the message")]


async def _token(api: _Instance, config: Config) -> list[Check]:
    me = await api.call("GET", "/api/v1/accounts/verify_credentials")
    if me.status == 200 and isinstance(me.body, dict):
        return [Check(name="token", ok=True, detail=f"valid, for @{me.body.get('acct')} (id {me.body.get('id')})")]
    return [Check(name="token", ok=False, detail=f"{me.status} {me.error or 'refused'}",
                  fix=f"create an access token for the bot account (Preferences → Development) and export it as "
                      f"${config.instance.token_env}")]


def _needed_scopes(config: Config) -> list[tuple[str, str, str, dict[str, str]]]:
    """(scope, method, path, params): one harmless probe per scope the configured policy uses."""
    needed = [("read:statuses", "GET", "/api/v1/timelines/public", {"limit": "1"}),
              ("write:reports", "POST", "/api/v1/reports", {}),
              ("admin:read:reports", "GET", "/api/v1/admin/reports", {"limit": "1"})]
    rules = config.policy.rules
    if any(rule.action.is_account_action for rule in rules):
        needed += [("admin:write:accounts", "POST", "/api/v1/admin/accounts/0/action", {}),
                   ("admin:read:accounts", "GET", "/api/v1/admin/accounts/0", {})]
    if any(rule.provisional for rule in rules):
        needed.append(("admin:write:reports", "POST", "/api/v1/admin/reports/0/reopen", {}))
    return needed


async def _scopes(api: _Instance, config: Config) -> list[Check]:
    missing, roles = [], []
    for scope, method, path, params in _needed_scopes(config):
        answer = await api.call(method, path, params)
        if answer.status == 403 and SCOPE_ERROR in answer.error:
            missing.append(scope)
        elif answer.status == 403 and ROLE_ERROR in answer.error:
            roles.append(scope)
        elif answer.status == 401:
            return [Check(name="scopes", ok=False, detail="the token is refused", fix="fix the token first")]
    checks = [Check(name="scopes", ok=not missing,
                    detail="enough for the configured policy" if not missing else "missing " + ", ".join(missing),
                    fix="" if not missing else "create a new token with these scopes too: " + " ".join(missing))]
    checks.append(Check(
        name="role", ok=not roles,
        detail="the account's role allows the admin calls (a harmless admin read answered)" if not roles else
               "the account's role may not use " + ", ".join(roles),
        fix="" if not roles else "give the bot account the Moderator role (Administration → Accounts → "
                                 "the bot → Change role)"))
    return checks


async def _timeline(api: _Instance, config: Config) -> list[Check]:
    answer = await api.call("GET", "/api/v1/timelines/public", {"limit": "1"})
    ok = answer.status == 200 and isinstance(answer.body, list)
    return [Check(name="public timeline", ok=ok, detail="readable" if ok else f"{answer.status} {answer.error}",
                  fix="" if ok else "the gap fill and sweeps read it: allow the token read:statuses")]


async def _own_filters(api: _Instance, config: Config) -> list[Check]:
    found = []
    for label, path in (("blocks", "/api/v1/blocks"), ("mutes", "/api/v1/mutes"),
                        ("domain blocks", "/api/v1/domain_blocks")):
        answer = await api.call("GET", path, {"limit": "5"})
        if answer.status == 200 and isinstance(answer.body, list) and answer.body:
            shown = [str(item.get("acct") if isinstance(item, dict) else item) for item in answer.body[:5]]
            found.append(f"{label} ({', '.join(shown)})")
    mine = await api.call("GET", "/api/v1/timelines/public", {"limit": "40"})
    anonymous = await api.call("GET", "/api/v1/timelines/public", {"limit": "40"}, token=False)
    hidden = 0
    if mine.status == 200 and anonymous.status == 200 and isinstance(mine.body, list) and \
            isinstance(anonymous.body, list) and anonymous.body:
        ids = {str(s.get("id")) for s in mine.body if isinstance(s, dict)}
        oldest_mine = min((int(i) for i in ids if i.isdecimal()), default=0)
        hidden = sum(1 for s in anonymous.body if isinstance(s, dict) and str(s.get("id")) not in ids
                     and str(s.get("id", "0")).isdecimal() and int(s["id"]) >= oldest_mine)
    if hidden:
        found.append(f"its settings hide {hidden} of the last {len(anonymous.body)} public posts (chosen languages?)")
    return [Check(
        name="bot account filters", ok=not found,
        detail="no blocks, mutes, domain blocks or language filter hide posts from it" if not found else
               "Mastodon drops from the bot's public stream what its own account hides: " + "; ".join(found),
        fix="" if not found else "as the bot account, remove its blocks, mutes and domain blocks and clear "
                                 "Preferences → Other → Filter languages; block instances with an admin domain "
                                 "block instead")]


async def _streaming(api: _Instance, config: Config) -> list[Check]:
    instance = await api.call("GET", "/api/v1/instance")
    urls = instance.body.get("urls") if isinstance(instance.body, dict) else None
    streaming = urls.get("streaming_api") if isinstance(urls, dict) else None
    parts = urlsplit(streaming if isinstance(streaming, str) and streaming else api.base)
    ws_url = urlunsplit(("wss" if parts.scheme in ("https", "wss") else "ws", parts.netloc, "/api/v1/streaming",
                         "", ""))
    http_base = urlunsplit(("https" if parts.scheme in ("https", "wss") else "http", parts.netloc, "", "", ""))
    session = api.session
    websocket_error = ""
    try:
        async with session.ws_connect(ws_url, headers=api.auth, timeout=aiohttp.ClientWSTimeout(ws_close=5)) as ws:
            await ws.send_json({"type": "subscribe", "stream": "public:media"})
            try:
                msg = await ws.receive(timeout=1.0)
                if msg.type == aiohttp.WSMsgType.TEXT and '"error"' in msg.data:
                    websocket_error = f"subscription refused: {msg.data[:200]}"
            except TimeoutError:
                pass  # Mastodon never acknowledges a subscription: silence is success
    except aiohttp.WSServerHandshakeError as exc:
        websocket_error = f"upgrade answered {exc.status} {exc.message}"
    sse_error = ""
    try:
        async with session.get(http_base + "/api/v1/streaming/public", params={"only_media": "true"},
                               headers={**api.auth, "Accept": "text/event-stream"},
                               timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=10)) as resp:
            if resp.status != 200 or not resp.headers.get("Content-Type", "").startswith("text/event-stream"):
                sse_error = f"answered {resp.status} {resp.headers.get('Content-Type', '')}"
            else:
                await asyncio.wait_for(resp.content.readline(), 10)
    except (TimeoutError, aiohttp.ClientError) as exc:
        sse_error = f"{type(exc).__name__}: {exc}"
    chosen = "websocket" if not websocket_error else "sse" if not sse_error else "none"
    return [
        Check(name="streaming (WebSocket)", ok=not websocket_error, detail=websocket_error or f"{ws_url} upgrades",
              fix="" if not websocket_error else "let the reverse proxy pass WebSocket upgrades for "
                                                 "/api/v1/streaming (Upgrade and Connection headers); fedimod falls "
                                                 "back to SSE meanwhile"),
        Check(name="streaming (SSE)", ok=not sse_error, detail=sse_error or f"{http_base}/api/v1/streaming/public",
              fix="" if not sse_error else "check that /api/v1/streaming/ reaches the streaming server"),
        Check(name="stream transport", ok=chosen != "none",
              detail=f"[instance] stream_transport = '{config.instance.stream_transport}'; 'auto' picks {chosen}",
              fix="" if chosen != "none" else "neither transport works: the bot would see no new posts"),
    ]


def _bindable(host: str, port: int) -> str:
    try:
        with socket.create_server((host, port), reuse_port=False):
            return ""
    except OSError as exc:
        return exc.strerror or str(exc)


async def _webhooks(config: Config) -> list[Check]:
    hooks = config.webhooks
    if hooks.host is None:
        return [Check(name="webhooks", ok=True, detail="receiver off ([webhooks] host unset); streams only")]
    problems = []
    if len(hooks.secret) < 16:
        problems.append(f"secret in ${hooks.secret_env} is {'unset' if not hooks.secret else 'short'}")
    if hooks.port and (error := _bindable(hooks.host, hooks.port)):
        problems.append(f"cannot listen on {hooks.host}:{hooks.port}: {error}")
    return [Check(name="webhooks", ok=not problems,
                  detail="; ".join(problems) or f"listener {hooks.host}:{hooks.port}{hooks.path}, secret set",
                  fix="" if not problems else f"export ${hooks.secret_env} (the secret Mastodon shows for the "
                                              "webhook) and free the port or change [webhooks] port")]


async def _ops(config: Config) -> list[Check]:
    ops = config.ops
    if ops.host is None:
        return [Check(name="ops endpoint", ok=True, detail="off ([ops] host unset): no /healthz or /metrics")]
    error = _bindable(ops.host, ops.port) if ops.port else ""
    return [Check(name="ops endpoint", ok=not error,
                  detail=f"cannot listen on {ops.host}:{ops.port}: {error}" if error else f"{ops.host}:{ops.port}",
                  fix="" if not error else "another process holds the port: stop it or change [ops] port")]


async def _store(config: Config) -> list[Check]:
    from fedimod.errors import StoreError
    from fedimod.store import StoreProbe, open_store
    from fedimod.store.lock import describe_holder, is_locked

    where = config.store.describe()
    if not config.store.is_postgres and is_locked(config.store.path):
        return [Check(name="store", ok=False,
                      detail=f"{where} is held by a running bot ({describe_holder(config.store.path)})",
                      fix="one bot per store: stop it before starting another, or give this one its own path")]
    try:
        async with open_store(config.store):
            pass  # created and migrated if new
    except StoreError as exc:
        return [Check(name="store", ok=False, detail=str(exc), fix="check [store]: the path's directory, or the "
                      "PostgreSQL server, its URL and the role's rights")]
    probe = StoreProbe(config.store)
    try:
        result = await probe.probe()
    finally:
        await probe.close()
    return [Check(name="store", ok=result.writable, detail=f"{where} writable" if result.writable else
                  f"{where}: {result.error}", fix="" if result.writable else "free disk space or fix the file's "
                                                                             "permissions")]


async def _media_store(config: Config) -> list[Check]:
    """The media-store channel, when configured: a read-only role on the instance's database that
    sees the tables, and the storage where the files are."""
    settings = config.media_store
    if not settings.enabled:
        return []
    from pathlib import Path

    from fedimod.ingest.media_store import InstanceDatabase

    async with InstanceDatabase(settings.database_url, statement_timeout_ms=settings.statement_timeout_ms) as db:
        newest = await db.newest_id()
    checks = [Check(name="media store database", ok=True,
                    detail=f"read-only role accepted; newest attachment id {newest}")]
    if settings.storage == "local":
        root = Path(settings.root)
        found = (root / "media_attachments").is_dir() or (root / "cache").is_dir()
        checks.append(Check(name="media storage", ok=found,
                            detail=f"{root} holds Mastodon's media" if found else
                            f"{root} has neither media_attachments/ nor cache/",
                            fix="" if found else "set root to Mastodon's public/system (PAPERCLIP_ROOT_PATH), "
                                                 "mounted read-only"))
    return checks


async def _banks(config: Config) -> list[Check]:
    from fedimod.store import open_store

    async with open_store(config.store) as store:
        entries = len(await store.bank_entries())
    return [Check(name="banks", ok=entries > 0, detail=f"{entries} active entries",
                  fix="" if entries else "import a hash bank: fedimod bank import FILE --bank NAME")]


async def _hashing(config: Config) -> list[Check]:
    from fedimod.cli.demo import generate_image, jpeg_bytes
    from fedimod.media import HashPool

    async with HashPool(processes=1, max_pixels=config.media.max_pixels,
                        timeout_s=config.media.hash_timeout_s) as pool:
        result = await pool.hash(jpeg_bytes(generate_image(1)))
    types = sorted({s.signal_type for s in result.signals})
    ok = result.reject_reason is None and set(types) == set(REGISTRY)
    return [Check(name="hash pool", ok=ok, detail=f"hashed a sample: {', '.join(types)}" if ok else
                  f"could not hash a sample: {result.reject_message or result.unhashable}",
                  fix="" if ok else "reinstall fedimod's dependencies (Pillow, numpy, pdqhash)")]


def render(checks: list[Check]) -> str:
    lines = []
    for check in checks:
        lines.append(f"  {'ok  ' if check.ok else 'FAIL'}  {check.name}: {check.detail}")
        if not check.ok and check.fix:
            lines.append(f"        fix: {check.fix}")
    failed = sum(not c.ok for c in checks)
    lines.append(f"{len(checks) - failed} of {len(checks)} checks passed" + (f"; {failed} to fix" if failed else ""))
    return "\n".join(lines) + "\n"
