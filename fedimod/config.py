"""config/fedimod.toml → a frozen, validated `Config`.

Loaded once at startup. A bad or missing setting stops startup with a `ConfigError` naming the key
path and what to do. Secrets are never in the file: the file names an environment variable
(`token_env`), read here and nowhere else.

Each stage defines its settings dataclass, with its defaults; this module only reads TOML into
them. A scalar field (int, float, bool, str) is read by its annotated type. Numbers must be greater
than 0 unless the field's metadata sets `min` (and `max`), with `why` as the message when given.
No stage imports this module (import-linter checks it).
"""

from __future__ import annotations

import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from fedimod.act.policy import DEFAULT_RULES, SCOPES, PolicySettings, Rule, TrustMap
from fedimod.act.report import COMMENT_FIELDS, REPORT_CATEGORIES, ReportSettings
from fedimod.blocklists.domains import Allowlist, DomainError
from fedimod.blocklists.merge import FIELDS as BLOCKLIST_FIELDS
from fedimod.blocklists.merge import MergePlan, SourcePolicy
from fedimod.blocklists.sync import KINDS as BLOCKLIST_KINDS
from fedimod.blocklists.sync import BlocklistSettings, BlocklistSource
from fedimod.errors import ConfigError
from fedimod.feeds.client import FeedSource
from fedimod.feeds.follow import FeedsSettings, FollowedSource
from fedimod.ingest.media_store import MediaStoreSettings
from fedimod.ingest.stream import TRANSPORTS
from fedimod.ingest.webhook import WebhookSettings
from fedimod.match.settings import BankSettings, default_thresholds
from fedimod.media.settings import MediaSettings
from fedimod.models import ACCOUNT_ACTIONS, ActionType, Category, Severity, Trust
from fedimod.ops.server import OpsSettings
from fedimod.ops.watchdog import WatchdogSettings
from fedimod.pipeline.retro import RetroSettings
from fedimod.pipeline.settings import STREAMS, Config, InstanceSettings, WorkerSettings
from fedimod.signals import REGISTRY
from fedimod.store.settings import StoreSettings

__all__ = ["Config", "load_config", "parse_config"]

S = TypeVar("S")
_REQUIRED = object()
_SCALARS = (int, float, bool, str)


class _Table:
    """A TOML table that remembers its key path, so every error names the key."""

    def __init__(self, data: Mapping[str, Any], path: str, known: frozenset[str]) -> None:
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{path}.{unknown[0]}" if path else unknown[0], "unknown setting; check spelling")
        self._data = data
        self._path = path

    def __contains__(self, name: str) -> bool:
        return name in self._data

    def key(self, name: str) -> str:
        return f"{self._path}.{name}" if self._path else name

    def get(self, name: str, kind: type | tuple[type, ...], default: Any) -> Any:
        if name not in self._data:
            if default is _REQUIRED:
                raise ConfigError(self.key(name), "is required")
            return default
        value = self._data[name]
        # bool is an int subclass; never accept true where a number is meant.
        if isinstance(value, bool) and kind in (int, float, (int, float)):
            raise ConfigError(self.key(name), f"expected a number, got {value!r}")
        if not isinstance(value, kind):
            expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise ConfigError(self.key(name), f"expected {expected}, got {type(value).__name__} {value!r}")
        return value

    def number(self, name: str, kind: type, limits: Mapping[str, Any]) -> int | float:
        """A number within the field's limits: greater than 0, or `min`..`max` from its metadata."""
        value = self.get(name, (int, float) if kind is float else int, _REQUIRED)
        low, high = limits.get("min"), limits.get("max")
        if low is None and value <= 0:
            raise ConfigError(self.key(name), limits.get("why", f"must be greater than 0, got {value!r}"))
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"between {low} and {high}" if low is not None and high is not None else (
                f"{low} or more" if low is not None else f"at most {high}")
            raise ConfigError(self.key(name), limits.get("why", f"must be {bounds}, got {value!r}"))
        return float(value) if kind is float else int(value)

    def table(self, name: str, known: frozenset[str]) -> _Table:
        return _Table(self.get(name, dict, {}), self.key(name), known)


def _scalar_fields(cls: type) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls) if hints[f.name] in _SCALARS}


def _read(table: _Table, cls: type[S], **given: Any) -> S:
    """`cls` from `table`: each scalar field the table sets, read by its type; `given` for the rest;
    every other field keeps the default `cls` states."""
    values = dict(given)
    scalars = _scalar_fields(cls)
    for f in fields(cls):  # type: ignore[arg-type]  # every caller passes a dataclass
        kind = scalars.get(f.name)
        if f.name in given or kind is None or f.name not in table:
            continue
        values[f.name] = table.number(f.name, kind, f.metadata) if kind in (int, float) else table.get(
            f.name, kind, _REQUIRED)
    return cls(**values)


def _names(cls: type, *, without: frozenset[str] = frozenset(), extra: frozenset[str] = frozenset()) -> frozenset[str]:
    return frozenset(f.name for f in fields(cls)) - without | extra


def load_config(path: Path, environ: Mapping[str, str] | None = None, *, require_token: bool = True,
                require_instance: bool = True) -> Config:
    """Read and validate the config file; `environ` defaults to the process environment.

    Commands that only touch the local store (bank import, status) pass `require_token=False`;
    those that never name the instance either (`bank`, `match`) also `require_instance=False`, so
    a config of a store and banks alone will do for checking files by hand.
    """
    env = os.environ if environ is None else environ
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(path), "config file not found; copy config/fedimod.toml and edit it") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), f"cannot read config file: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from exc
    return parse_config(raw, env, require_token=require_token, require_instance=require_instance)


def parse_config(raw: Mapping[str, Any], env: Mapping[str, str], *, require_token: bool = True,
                 require_instance: bool = True) -> Config:
    top = _Table(raw, "", frozenset({"instance", "store", "media", "workers", "report", "banks", "ops", "policy",
                                       "webhooks", "watchdog", "logging", "feeds", "retro", "blocklists",
                                       "ingest"}))
    feeds = _feeds(top.table("feeds", frozenset({"serve", "sources", "publish_confirmed"})), env)
    policy = _policy(top.table("policy", _names(PolicySettings, extra=frozenset({"default_trust"}))))
    return Config(
        instance=_instance(top.table("instance", _names(InstanceSettings, without=frozenset({"token"}))), env,
                           require_token, require_instance),
        store=_store(top.table("store", frozenset({"path", "url", "url_env"})), env),
        media=_media(top.table("media", _names(MediaSettings))),
        workers=_read(top.table("workers", _names(WorkerSettings)), WorkerSettings),
        report=_report(top.table("report", _names(ReportSettings))),
        banks=_banks(top),
        ops=_ops(top.table("ops", frozenset({"listen", "probe_interval_s"}))),
        policy=replace(policy, trust=TrustMap({**feeds.trust, **policy.trust.levels}, policy.trust.default)),
        feeds=feeds.settings,
        webhooks=_webhooks(top.table("webhooks", frozenset({"listen", "path", "secret_env"})), env, require_token),
        watchdog=_watchdog(top.table("watchdog", _names(WatchdogSettings))),
        retro=_read(top.table("retro", _names(RetroSettings)), RetroSettings),
        blocklists=_blocklists(top.table("blocklists", _BLOCKLIST_KEYS), env),
        media_store=_media_store(top.table("ingest", frozenset({"media_store"})), env),
        log_level=_log_level(top.table("logging", frozenset({"level"}))),
    )


def _instance(table: _Table, env: Mapping[str, str], require_token: bool, require_instance: bool = True
              ) -> InstanceSettings:
    if not require_instance and "base_url" not in table:
        return InstanceSettings(base_url="")  # the command never calls the instance
    base_url = table.get("base_url", str, _REQUIRED).rstrip("/")
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(table.key("base_url"),
                          f"{base_url!r} must be an http(s) URL such as https://mastodon.example")
    token_env = table.get("token_env", str, InstanceSettings(base_url=base_url).token_env)
    token = env.get(token_env, "")
    if not token and require_token:
        raise ConfigError(
            table.key("token_env"),
            f"environment variable {token_env} is empty or unset; export the bot account's access token there",
        )
    given: dict[str, Any] = {"base_url": base_url, "token_env": token_env, "token": token}
    if "streams" in table:
        streams = tuple(table.get("streams", list, _REQUIRED))
        if not streams:
            raise ConfigError(table.key("streams"), "name at least one stream")
        for i, stream in enumerate(streams):
            if stream not in STREAMS:
                raise ConfigError(f"{table.key('streams')}[{i}]", f"{stream!r} is not one of {', '.join(STREAMS)}")
        given["streams"] = streams
    instance = _read(table, InstanceSettings, **given)
    if instance.stream_transport not in TRANSPORTS:
        raise ConfigError(table.key("stream_transport"),
                          f"{instance.stream_transport!r} is not one of {', '.join(TRANSPORTS)}")
    if instance.api_action_reserve >= instance.api_budget:
        raise ConfigError(table.key("api_action_reserve"), "must be at least 0 and less than api_budget")
    return instance


def _media(table: _Table) -> MediaSettings:
    allow_hosts = table.get("allow_hosts", list, [])
    for i, host in enumerate(allow_hosts):
        if not isinstance(host, str) or not host:
            raise ConfigError(f"{table.key('allow_hosts')}[{i}]", "must be a host name or IP address")
    return _read(table, MediaSettings, allow_hosts=tuple(h.lower() for h in allow_hosts))


def _report(table: _Table) -> ReportSettings:
    report = _read(table, ReportSettings)
    if report.category not in REPORT_CATEGORIES:
        raise ConfigError(table.key("category"), f"{report.category!r} is not one of {', '.join(REPORT_CATEGORIES)}")
    _check_template(table, "comment_template", report.comment_template)
    return report


def _banks(top: _Table) -> BankSettings:
    """`refresh_s`, and `<type>_threshold` for each perceptual signal type the registry holds."""
    keys = {f"{st.name}_threshold": st for st in REGISTRY.values() if st.is_perceptual}
    table = top.table("banks", frozenset({"refresh_s", *keys}))
    thresholds = default_thresholds()
    for key, st in keys.items():
        if key in table:
            thresholds[st.name] = int(table.number(key, int, {"min": 0, "max": st.bits // 4, "why": (
                f"must be between 0 and {st.bits // 4} (a quarter of the hash); got {table.get(key, int, 0)}")}))
    return _read(table, BankSettings, thresholds=thresholds)


def _listen(table: _Table, default: str) -> tuple[str, int] | None:
    """`listen = "HOST:PORT"`; "" disables."""
    listen = table.get("listen", str, default)
    if not listen:
        return None
    host, _, port_text = listen.rpartition(":")
    if not host or not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise ConfigError(table.key("listen"),
                          f"{listen!r} must be HOST:PORT such as 127.0.0.1:9464, or \"\" to disable")
    return host.strip("[]"), int(port_text)


def _store(table: _Table, env: Mapping[str, str]) -> StoreSettings:
    """`[store] path` (SQLite), or `url` / `url_env` (the variable holding a postgresql:// URL, so
    that a password stays out of the file)."""
    url = table.get("url", str, "")
    if "url_env" in table:
        name = table.get("url_env", str, "")
        url = env.get(name, "")
        if not url:
            raise ConfigError("store.url_env", f"the environment variable {name} is not set")
    if url and "path" in table:
        raise ConfigError("store.url", "set either path (SQLite) or url (PostgreSQL), not both")
    if url:
        if not url.startswith(("postgresql://", "postgres://")):
            raise ConfigError("store.url", "must be a postgresql:// URL (SQLite is configured by path)")
        return StoreSettings(url=url)
    return StoreSettings(path=Path(table.get("path", str, str(StoreSettings().path))))


_SECRETS = {"database_url": "database_url_env", "s3_access_key": "s3_access_key_env",
            "s3_secret_key": "s3_secret_key_env"}


def _media_store(ingest: _Table, env: Mapping[str, str]) -> MediaStoreSettings:
    """`[ingest.media_store]`; the database URL and the bucket's keys may come from variables
    named by `…_env`, so that no secret sits in the file."""
    known = (_names(MediaStoreSettings) - {"s3_access_key", "s3_secret_key"}) | frozenset(_SECRETS.values())
    table = ingest.table("media_store", known)
    given: dict[str, Any] = {}
    for name, env_key in _SECRETS.items():
        if env_key in table:
            variable = table.get(env_key, str, "")
            if not env.get(variable):
                raise ConfigError(table.key(env_key), f"the environment variable {variable} is not set")
            given[name] = env[variable]
    settings = _read(table, MediaStoreSettings, **given)
    if settings.enabled:
        if not settings.database_url:
            raise ConfigError(table.key("database_url"), "set database_url or database_url_env: a read-only role on "
                              "the instance's PostgreSQL database")
        if settings.storage not in ("local", "s3"):
            raise ConfigError(table.key("storage"), f"must be local or s3, got {settings.storage!r}")
        if settings.storage == "local" and not settings.root:
            raise ConfigError(table.key("root"), "the directory Mastodon keeps media in (its public/system)")
        if settings.storage == "s3" and not (settings.s3_endpoint and settings.s3_bucket):
            raise ConfigError(table.key("s3_bucket"), "s3 storage needs s3_endpoint and s3_bucket")
    return settings


def _ops(table: _Table) -> OpsSettings:
    default = OpsSettings()
    address = _listen(table, f"{default.host}:{default.port}")
    where = {"host": None} if address is None else {"host": address[0], "port": address[1]}
    return _read(table, OpsSettings, **where)


def _webhooks(table: _Table, env: Mapping[str, str], require_token: bool) -> WebhookSettings:
    address = _listen(table, "")
    if address is None:
        return WebhookSettings()
    secret_env = table.get("secret_env", str, WebhookSettings().secret_env)
    secret = env.get(secret_env, "")
    if len(secret) < 12 and require_token:
        raise ConfigError(table.key("secret_env"), f"environment variable {secret_env} must hold the webhook's "
                                                   "secret (Mastodon's are 12 characters or more)")
    webhooks = _read(table, WebhookSettings, host=address[0], port=address[1], secret_env=secret_env, secret=secret)
    if not webhooks.path.startswith("/"):
        raise ConfigError(table.key("path"), f"{webhooks.path!r} must start with /")
    return webhooks


def _watchdog(table: _Table) -> WatchdogSettings:
    watchdog = _read(table, WatchdogSettings)
    watchdog = replace(watchdog, notify_account=watchdog.notify_account.lstrip("@"))
    if watchdog.notify_url and urlsplit(watchdog.notify_url).scheme not in ("http", "https"):
        raise ConfigError(table.key("notify_url"), f"{watchdog.notify_url!r} must be an http(s) URL")
    return watchdog


@dataclass(frozen=True, slots=True)
class _Feeds:
    settings: FeedsSettings
    trust: dict[str, Trust]  # each source's trust level, for the policy (unless [policy.trust] names it)


_SOURCE_KEYS = frozenset({"name", "url", "feed", "key", "trust", "categories", "poll_interval_s", "stale_after_s",
                          "required", "token_env", "static", "daily_cap", "relay_to", "members"})


def _feeds(table: _Table, env: Mapping[str, str]) -> _Feeds:
    serve = table.table("serve", frozenset({"listen", "key_file", "tokens_env", "rate_per_s", "burst", "feeds",
                                            "blocklist"}))
    address = _listen(serve, "")
    key_file = serve.get("key_file", str, "")
    if address is not None and not key_file:
        raise ConfigError(serve.key("key_file"), "serving feeds needs the signing key: fedimod feed keygen --key PATH")
    raw_sources = table.get("sources", list, [])
    sources: list[FollowedSource] = []
    trust: dict[str, Trust] = {}
    for i, raw in enumerate(raw_sources):
        path = f"{table.key('sources')}[{i}]"
        if not isinstance(raw, dict):
            raise ConfigError(path, "must be a table ([[feeds.sources]])")
        src = _Table(raw, path, _SOURCE_KEYS)
        name = src.get("name", str, _REQUIRED)
        if name in trust or not name or name == "local":
            raise ConfigError(src.key("name"), f"{name!r} is empty, 'local' or used by another source")
        url = src.get("url", str, _REQUIRED)
        if urlsplit(url).scheme not in ("http", "https"):
            raise ConfigError(src.key("url"), f"{url!r} must be an http(s) URL")
        key = src.get("key", str, _REQUIRED)
        if len(key) != 43:
            raise ConfigError(src.key("key"), "must be the source's Ed25519 public key (43 base64url characters)")
        token_env = src.get("token_env", str, "")
        relay_to = src.get("relay_to", str, "") or None
        if relay_to is not None and not key_file:
            raise ConfigError(src.key("relay_to"), "relaying a source (hub mode) needs this instance's feed key: "
                                                   "set [feeds.serve] key_file")
        members = src.get("members", list, [])
        if not all(isinstance(m, str) and len(m) == 43 for m in members):
            raise ConfigError(src.key("members"), "must list Ed25519 public keys (43 base64url characters each)")
        trust[name] = _choice(src, "trust", Trust, src.get("trust", str, Trust.UNKNOWN.value))
        source = FeedSource(name=name, url=url, feed=src.get("feed", str, _REQUIRED), key=key,
                            categories=_choices(src, "categories", Category), token=env.get(token_env, ""),
                            static=src.get("static", bool, False),
                            daily_cap=int(src.number("daily_cap", int, {})) if "daily_cap" in src else None,
                            relay_to=relay_to, members=frozenset(members))
        sources.append(FollowedSource(
            source=source, required=src.get("required", bool, False),
            poll_interval_s=src.number("poll_interval_s", float, {}) if "poll_interval_s" in src else 300.0,
            stale_after_s=src.number("stale_after_s", float, {}) if "stale_after_s" in src else None))
    tokens_env = serve.get("tokens_env", str, "")
    tokens = frozenset(t.strip() for t in env.get(tokens_env, "").split(",") if t.strip() and tokens_env)
    if tokens_env and not tokens:
        raise ConfigError(serve.key("tokens_env"), f"environment variable {tokens_env} holds no tokens "
                                                   "(comma-separated); unset tokens_env for a public feed")
    publish = table.get("publish_confirmed", str, "")
    if publish and not key_file:
        raise ConfigError(table.key("publish_confirmed"), "publishing confirmed hashes needs this instance's feed "
                                                          "key: set [feeds.serve] key_file")
    settings = FeedsSettings(
        sources=tuple(sources), key_file=key_file, serve_tokens=tokens, publish_confirmed=publish,
        serve_rate_per_s=serve.number("rate_per_s", float, {}) if "rate_per_s" in serve else 20.0,
        serve_burst=int(serve.number("burst", int, {})) if "burst" in serve else 60,
        serve_feeds=frozenset(str(f) for f in serve.get("feeds", list, [])),
        serve_blocklist=serve.get("blocklist", bool, False))
    if address is not None:
        settings = replace(settings, serve_host=address[0], serve_port=address[1])
    return _Feeds(settings=settings, trust=trust)


_BLOCKLIST_KEYS = frozenset({"sources", "mode", "threshold", "threshold_percent", "weighted", "allowlist",
                             "allow_removals", "allow_lowering", "hold_followed", "interval_s"})
_BLOCKLIST_SOURCE_KEYS = frozenset({"name", "kind", "url", "path", "token_env", "weight", "fields", "max_severity",
                                    "lenient"})


def _blocklists(table: _Table, env: Mapping[str, str]) -> BlocklistSettings:
    mode = table.get("mode", str, "max")
    if mode not in ("max", "min"):
        raise ConfigError(table.key("mode"), f"{mode!r} is not max or min")
    percent = table.get("threshold_percent", bool, False)
    threshold = table.number("threshold", float, {"min": 0.0, "max": 100.0}) if "threshold" in table else 1.0
    allowlist = table.get("allowlist", list, [])
    try:
        Allowlist([str(a) for a in allowlist])
    except DomainError as exc:
        raise ConfigError(table.key("allowlist"), str(exc)) from None
    sources = []
    names: set[str] = set()
    for i, raw in enumerate(table.get("sources", list, [])):
        path = f"{table.key('sources')}[{i}]"
        if not isinstance(raw, dict):
            raise ConfigError(path, "must be a table ([[blocklists.sources]])")
        src = _Table(raw, path, _BLOCKLIST_SOURCE_KEYS)
        name = src.get("name", str, _REQUIRED)
        if not name or name in names:
            raise ConfigError(src.key("name"), f"{name!r} is empty or used by another source")
        names.add(name)
        kind = src.get("kind", str, _REQUIRED)
        if kind not in BLOCKLIST_KINDS:
            raise ConfigError(src.key("kind"), f"{kind!r} is not one of {', '.join(BLOCKLIST_KINDS)}")
        location = src.get("url", str, "") or src.get("path", str, "")
        if not location or (kind in ("instance", "admin") and urlsplit(location).scheme not in ("http", "https")):
            raise ConfigError(src.key("url"), "an instance or admin source needs the peer's http(s) URL; a csv or "
                                              "json source a url or a path")
        fields = src.get("fields", list, sorted(BLOCKLIST_FIELDS))
        if not set(fields) <= BLOCKLIST_FIELDS:
            raise ConfigError(src.key("fields"), f"fields are among {', '.join(sorted(BLOCKLIST_FIELDS))}")
        token_env = src.get("token_env", str, "")
        policy = SourcePolicy(
            weight=src.number("weight", float, {"min": 0.0}) if "weight" in src else 1.0,
            fields=frozenset(str(f) for f in fields),
            max_severity=_choice(src, "max_severity", Severity, src.get("max_severity", str, "suspend")))
        sources.append(BlocklistSource(name=name, kind=kind, location=location, token=env.get(token_env, ""),
                                       policy=policy, lenient=src.get("lenient", bool, False)))
    return BlocklistSettings(
        sources=tuple(sources), plan=MergePlan(mode=mode, threshold=threshold, percent=percent,
                                               weighted=table.get("weighted", bool, False)),
        allowlist=tuple(str(a) for a in allowlist), allow_removals=table.get("allow_removals", bool, False),
        allow_lowering=table.get("allow_lowering", bool, False), hold_followed=table.get("hold_followed", bool, True),
        interval_s=table.number("interval_s", float, {"min": 0.0}) if "interval_s" in table else 0.0)


def _log_level(table: _Table) -> str:
    level = str(table.get("level", str, "INFO")).upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(table.key("level"), f"{level!r} is not one of DEBUG, INFO, WARNING, ERROR")
    return level


E = TypeVar("E", ActionType, Category, Trust, Severity)
_RULE_KEYS = frozenset({"name", "action", "categories", "signal_types", "trust", "min_sources", "max_distance",
                        "min_quality", "scope", "forward", "notify", "comment", "provisional", "review_within_s"})


def _choice(table: _Table, name: str, kind: type[E], value: object) -> E:
    try:
        return kind(str(value))
    except ValueError:
        raise ConfigError(table.key(name), f"{value!r} is not one of {', '.join(m.value for m in kind)}") from None


def _choices(table: _Table, name: str, kind: type[E]) -> frozenset[E] | None:
    values = table.get(name, list, None)
    if values is None:
        return None
    if not values:
        raise ConfigError(table.key(name), "empty list matches nothing; leave the key out to match any")
    return frozenset(_choice(table, f"{name}[{i}]", kind, v) for i, v in enumerate(values))


def _policy(table: _Table) -> PolicySettings:
    default_trust = _choice(table, "default_trust", Trust, table.get("default_trust", str, TrustMap().default.value))
    trust_table = table.get("trust", dict, {source: level.value for source, level in TrustMap().levels.items()})
    levels = {str(source): _choice(table, f"trust.{source}", Trust, level) for source, level in trust_table.items()}
    raw_rules = table.get("rules", list, None)
    rules: tuple[Rule, ...] = DEFAULT_RULES
    if raw_rules is not None:
        if not raw_rules:
            raise ConfigError(table.key("rules"), "no rules: leave [[policy.rules]] out for the default (report all)")
        parsed: list[Rule] = []
        for i, raw in enumerate(raw_rules):
            if not isinstance(raw, dict):
                raise ConfigError(f"{table.key('rules')}[{i}]", "must be a table ([[policy.rules]])")
            parsed.append(_rule(_Table(raw, f"{table.key('rules')}[{i}]", _RULE_KEYS), i))
        names = [r.name for r in parsed]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ConfigError(f"{table.key('rules')}[{i}].name", f"rule name {name!r} is used twice")
        rules = tuple(parsed)
    return _read(table, PolicySettings, rules=rules, trust=TrustMap(levels, default_trust))


def _rule(rule: _Table, index: int) -> Rule:
    action = _choice(rule, "action", ActionType, rule.get("action", str, _REQUIRED))
    scope = rule.get("scope", str, "any")
    if scope not in SCOPES:
        raise ConfigError(rule.key("scope"), f"{scope!r} is not one of {', '.join(SCOPES)}")
    signal_types = rule.get("signal_types", list, None)
    if signal_types is not None:
        for i, name in enumerate(signal_types):
            if name not in REGISTRY:
                raise ConfigError(f"{rule.key('signal_types')}[{i}]",
                                  f"{name!r} is not one of {', '.join(REGISTRY)}")
    comment = rule.get("comment", str, None)
    if comment is not None:
        _check_template(rule, "comment", comment)
    if action.spec.local_only and scope != "local":
        raise ConfigError(rule.key("scope"), f"{action} applies to local accounts only (Mastodon cannot {action} a "
                                             "remote account); set scope = \"local\"")
    provisional = rule.get("provisional", bool, False)
    if provisional and not action.is_account_action:
        raise ConfigError(rule.key("provisional"), "only account actions "
                          f"({', '.join(a.value for a in ACCOUNT_ACTIONS)}) can be provisional, not {action}")
    max_distance = rule.get("max_distance", int, None)
    if max_distance is not None and max_distance < 0:
        raise ConfigError(rule.key("max_distance"), "must be 0 or more")
    min_quality = rule.get("min_quality", int, None)
    if min_quality is not None and not 0 <= min_quality <= 100:
        raise ConfigError(rule.key("min_quality"), "must be between 0 and 100")
    defaults = Rule(name="", action=action)
    return Rule(
        name=rule.get("name", str, f"rule-{index + 1}"), action=action,
        categories=_choices(rule, "categories", Category), signal_types=None if signal_types is None
        else frozenset(signal_types), trust=_choices(rule, "trust", Trust),
        min_sources=int(rule.number("min_sources", int, {})) if "min_sources" in rule else defaults.min_sources,
        max_distance=max_distance, min_quality=min_quality,
        scope=scope, forward=rule.get("forward", bool, None), notify=rule.get("notify", bool, defaults.notify),
        comment=comment, provisional=provisional,
        review_s=rule.number("review_within_s", float, {}) if "review_within_s" in rule else defaults.review_s,
    )


def _check_template(table: _Table, name: str, template: str) -> None:
    try:
        rendered = template.format(**COMMENT_FIELDS)
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(
            table.key(name),
            f"cannot be rendered ({exc!r}); use only the fields {', '.join(sorted(COMMENT_FIELDS))}",
        ) from exc
    if len(rendered) > 900:
        raise ConfigError(table.key(name), "is too long; Mastodon caps report comments at 1000 characters")
