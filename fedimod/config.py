"""config/fedimod.toml → a frozen, validated `Config`.

Loaded once at startup. A bad or missing setting stops startup with a `ConfigError` naming the key
path and what to do. Secrets are never in the file: the file names an environment variable
(`token_env`), read here and nowhere else.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from fedimod.act.policy import DEFAULT_RULES, SCOPES, Rule, TrustMap
from fedimod.errors import ConfigError
from fedimod.ingest.stream import TRANSPORTS
from fedimod.models import ActionType, Category, Trust
from fedimod.signals import REGISTRY

REPORT_CATEGORIES = ("legal", "spam", "violation", "other")
STREAMS = ("public", "public:local", "public:remote", "public:media", "public:local:media", "public:remote:media")
COMMENT_FIELDS = {
    "rule": "review",
    "action": "report",
    "bank": "local",
    "category": "csam",
    "signal_type": "pdq",
    "distance": 3,
    "threshold": 31,
    "matches": 1,
    "key": "k",
}
DEFAULT_COMMENT = (
    "fedimod hash match ({action}, rule {rule}): {signal_type} distance {distance}/{threshold} to an entry in bank "
    "'{bank}' (category {category}); {matches} match(es). No media attached. ref {key}"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceConfig:
    base_url: str
    token_env: str
    token: str = field(repr=False)
    streams: tuple[str, ...] = ("public:media",)
    request_timeout_s: float = 30.0
    reconnect_max_s: float = 60.0
    sweep_window_s: float = 24 * 3600.0
    sweep_interval_s: float = 600.0
    # "auto": WebSocket, falling back to SSE when upgrades are refused; or force "websocket"/"sse".
    stream_transport: str = "auto"
    websocket_retry_s: float = 600.0
    # Client-side API budget for this token: Mastodon allows 300 calls per 5 minutes per token.
    api_budget: int = 300
    api_budget_window_s: float = 300.0
    # Calls of each window kept back for actions: lookups and syncs stop short of them.
    api_action_reserve: int = 50


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreConfig:
    path: Path


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaConfig:
    max_bytes: int = 16 * 1024 * 1024
    # Mastodon accepts videos up to 99 MB; they are hashed from memory, never written to disk.
    max_video_bytes: int = 100 * 1024 * 1024
    # Frames hashed per animated image or video: the first and up to this many evenly spaced.
    max_frames: int = 5
    timeout_s: float = 30.0
    connect_timeout_s: float = 10.0
    max_redirects: int = 3
    max_pixels: int = 40_000_000
    # Pixels decoded across all frames of one item (each GIF/APNG frame is drawn on the full canvas).
    max_decoded_pixels: int = 400_000_000
    # Wall-clock limit for decoding and hashing one item; the worker is killed and replaced past it.
    hash_timeout_s: float = 20.0
    allow_hosts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerConfig:
    concurrency: int = 4
    hash_processes: int = 0
    max_attempts: int = 5
    lease_s: float = 120.0
    retry_delay_s: float = 5.0
    shutdown_grace_s: float = 20.0


@dataclass(frozen=True, slots=True, kw_only=True)
class BanksConfig:
    refresh_s: float = 5.0
    pdq_threshold: int = 31
    phash_threshold: int = 8

    @property
    def thresholds(self) -> dict[str, int]:
        return {"pdq": self.pdq_threshold, "phash": self.phash_threshold}


@dataclass(frozen=True, slots=True, kw_only=True)
class OpsConfig:
    """Where /healthz, /readyz and /metrics listen; host None disables the endpoint."""

    host: str | None = "127.0.0.1"
    port: int = 9464
    # How often the store is probed for writability and its figures read, on a connection of its
    # own: /readyz and /metrics serve the last probe, so scrapes never touch the pipeline's store.
    probe_interval_s: float = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchdogConfig:
    interval_s: float = 30.0
    stall_s: float = 300.0
    max_error_rate: float = 0.5
    min_attempts: int = 20
    notify_account: str = ""  # acct to send a direct message to ("" : none)
    notify_url: str = ""  # URL to POST a JSON alert to ("" : none)


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookConfig:
    """Admin webhook receiver; host None disables it."""

    host: str | None = None
    port: int = 9465
    path: str = "/webhooks/mastodon"
    secret_env: str = "FEDIMOD_WEBHOOK_SECRET"
    secret: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportConfig:
    category: str = "legal"
    forward: bool = False
    comment_template: str = DEFAULT_COMMENT
    dry_run: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyConfig:
    rules: tuple[Rule, ...] = DEFAULT_RULES
    trust: TrustMap = field(default_factory=TrustMap)
    # When a bank entry is retracted or allowlisted, undo (unsilence, unsuspend, unsensitive) the
    # account actions it caused that no other current match justifies. Off: they are only flagged.
    reverse_on_retraction: bool = False
    # How often provisional actions are checked for a moderator's decision or an expired deadline.
    review_poll_s: float = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    instance: InstanceConfig
    store: StoreConfig
    media: MediaConfig
    workers: WorkerConfig
    report: ReportConfig
    banks: BanksConfig = field(default_factory=BanksConfig)
    ops: OpsConfig = field(default_factory=lambda: OpsConfig(host=None))
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    webhooks: WebhookConfig = field(default_factory=WebhookConfig)
    watchdog: WatchdogConfig = field(default_factory=WatchdogConfig)
    log_level: str = "INFO"


class _Table:
    """A TOML table that remembers its key path, so every error names the key."""

    def __init__(self, data: Mapping[str, Any], path: str, known: frozenset[str]) -> None:
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{path}.{unknown[0]}" if path else unknown[0], "unknown setting; check spelling")
        self._data = data
        self._path = path

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

    def positive(self, name: str, default: Any, kind: type | tuple[type, ...] = (int, float)) -> Any:
        value = self.get(name, kind, default)
        if value <= 0:
            raise ConfigError(self.key(name), f"must be greater than 0, got {value!r}")
        return value

    def table(self, name: str, known: frozenset[str]) -> _Table:
        sub = self.get(name, dict, {})
        return _Table(sub, self.key(name), known)


_REQUIRED = object()


def _default(cls: type, name: str) -> Any:
    """A field's default (with slots=True the class attribute is a descriptor, not the default)."""
    return next(f.default for f in fields(cls) if f.name == name)


def _fields(cls: type) -> frozenset[str]:
    return frozenset(cls.__dataclass_fields__)  # type: ignore[attr-defined]  # every caller passes a dataclass


def load_config(path: Path, environ: Mapping[str, str] | None = None, *, require_token: bool = True) -> Config:
    """Read and validate the config file; `environ` defaults to the process environment.

    Commands that only touch the local store (bank import, status) pass `require_token=False`.
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
    return parse_config(raw, env, require_token=require_token)


def parse_config(raw: Mapping[str, Any], env: Mapping[str, str], *, require_token: bool = True) -> Config:
    top = _Table(raw, "", frozenset({"instance", "store", "media", "workers", "report", "banks", "ops", "policy",
                                       "webhooks", "watchdog", "logging"}))

    inst = top.table("instance", _fields(InstanceConfig) - {"token"})
    base_url = inst.get("base_url", str, _REQUIRED).rstrip("/")
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(inst.key("base_url"), f"{base_url!r} must be an http(s) URL such as https://mastodon.example")
    token_env = inst.get("token_env", str, "FEDIMOD_TOKEN")
    token = env.get(token_env, "")
    if not token and require_token:
        raise ConfigError(
            inst.key("token_env"),
            f"environment variable {token_env} is empty or unset; export the bot account's access token there",
        )
    streams = tuple(inst.get("streams", list, ["public:media"]))
    if not streams:
        raise ConfigError(inst.key("streams"), "name at least one stream")
    for i, stream in enumerate(streams):
        if stream not in STREAMS:
            raise ConfigError(f"{inst.key('streams')}[{i}]", f"{stream!r} is not one of {', '.join(STREAMS)}")
    instance = InstanceConfig(
        base_url=base_url,
        token_env=token_env,
        token=token,
        streams=streams,
        request_timeout_s=inst.positive("request_timeout_s", 30.0),
        reconnect_max_s=inst.positive("reconnect_max_s", 60.0),
        sweep_window_s=inst.positive("sweep_window_s", 24 * 3600.0),
        sweep_interval_s=inst.positive("sweep_interval_s", 600.0),
        stream_transport=inst.get("stream_transport", str, "auto"),
        websocket_retry_s=inst.positive("websocket_retry_s", _default(InstanceConfig, "websocket_retry_s")),
        api_budget=inst.positive("api_budget", _default(InstanceConfig, "api_budget"), int),
        api_budget_window_s=inst.positive("api_budget_window_s", _default(InstanceConfig, "api_budget_window_s")),
        api_action_reserve=inst.get("api_action_reserve", int, _default(InstanceConfig, "api_action_reserve")),
    )
    if instance.stream_transport not in TRANSPORTS:
        raise ConfigError(inst.key("stream_transport"),
                          f"{instance.stream_transport!r} is not one of {', '.join(TRANSPORTS)}")
    if not 0 <= instance.api_action_reserve < instance.api_budget:
        raise ConfigError(inst.key("api_action_reserve"), "must be at least 0 and less than api_budget")

    st = top.table("store", frozenset({"path"}))
    store = StoreConfig(path=Path(st.get("path", str, "fedimod.sqlite3")))

    med = top.table("media", _fields(MediaConfig))
    allow_hosts = med.get("allow_hosts", list, [])
    for i, host in enumerate(allow_hosts):
        if not isinstance(host, str) or not host:
            raise ConfigError(f"{med.key('allow_hosts')}[{i}]", "must be a host name or IP address")
    media = MediaConfig(
        max_bytes=med.positive("max_bytes", _default(MediaConfig, "max_bytes"), int),
        max_video_bytes=med.positive("max_video_bytes", _default(MediaConfig, "max_video_bytes"), int),
        max_frames=med.positive("max_frames", _default(MediaConfig, "max_frames"), int),
        timeout_s=med.positive("timeout_s", _default(MediaConfig, "timeout_s")),
        connect_timeout_s=med.positive("connect_timeout_s", _default(MediaConfig, "connect_timeout_s")),
        max_redirects=med.get("max_redirects", int, _default(MediaConfig, "max_redirects")),
        max_pixels=med.positive("max_pixels", _default(MediaConfig, "max_pixels"), int),
        max_decoded_pixels=med.positive("max_decoded_pixels", _default(MediaConfig, "max_decoded_pixels"), int),
        hash_timeout_s=med.positive("hash_timeout_s", _default(MediaConfig, "hash_timeout_s")),
        allow_hosts=tuple(h.lower() for h in allow_hosts),
    )
    if not 0 <= media.max_redirects <= 10:
        raise ConfigError(med.key("max_redirects"), "must be between 0 and 10")

    wk = top.table("workers", _fields(WorkerConfig))
    workers = WorkerConfig(
        concurrency=wk.positive("concurrency", _default(WorkerConfig, "concurrency"), int),
        hash_processes=wk.get("hash_processes", int, _default(WorkerConfig, "hash_processes")),
        max_attempts=wk.positive("max_attempts", _default(WorkerConfig, "max_attempts"), int),
        lease_s=wk.positive("lease_s", _default(WorkerConfig, "lease_s")),
        retry_delay_s=wk.positive("retry_delay_s", _default(WorkerConfig, "retry_delay_s")),
        shutdown_grace_s=wk.positive("shutdown_grace_s", _default(WorkerConfig, "shutdown_grace_s")),
    )
    if workers.hash_processes < 0:
        raise ConfigError(wk.key("hash_processes"), "must be 0 (one per core) or a positive count")

    rp = top.table("report", _fields(ReportConfig))
    category = rp.get("category", str, _default(ReportConfig, "category"))
    if category not in REPORT_CATEGORIES:
        raise ConfigError(rp.key("category"), f"{category!r} is not one of {', '.join(REPORT_CATEGORIES)}")
    template = rp.get("comment_template", str, DEFAULT_COMMENT)
    _check_template(rp, "comment_template", template)
    report = ReportConfig(
        category=category,
        forward=rp.get("forward", bool, False),
        comment_template=template,
        dry_run=rp.get("dry_run", bool, False),
    )

    bk = top.table("banks", _fields(BanksConfig))
    banks = BanksConfig(
        refresh_s=bk.positive("refresh_s", _default(BanksConfig, "refresh_s")),
        pdq_threshold=bk.get("pdq_threshold", int, _default(BanksConfig, "pdq_threshold")),
        phash_threshold=bk.get("phash_threshold", int, _default(BanksConfig, "phash_threshold")),
    )
    for key, bits in (("pdq_threshold", 256), ("phash_threshold", 64)):
        value = getattr(banks, key)
        if not 0 <= value <= bits // 4:
            raise ConfigError(bk.key(key), f"must be between 0 and {bits // 4} (a quarter of the hash); got {value}")

    op = top.table("ops", frozenset({"listen", "probe_interval_s"}))
    probe_interval_s = op.positive("probe_interval_s", _default(OpsConfig, "probe_interval_s"))
    ops = OpsConfig(host=None, probe_interval_s=probe_interval_s)
    if address := _listen(op, "127.0.0.1:9464"):
        ops = OpsConfig(host=address[0], port=address[1], probe_interval_s=probe_interval_s)

    wh = top.table("webhooks", frozenset({"listen", "path", "secret_env"}))
    webhooks = WebhookConfig()
    if address := _listen(wh, ""):
        secret_env = wh.get("secret_env", str, "FEDIMOD_WEBHOOK_SECRET")
        secret = env.get(secret_env, "")
        if len(secret) < 12 and require_token:
            raise ConfigError(wh.key("secret_env"), f"environment variable {secret_env} must hold the webhook's "
                                                    "secret (Mastodon's are 12 characters or more)")
        path = wh.get("path", str, "/webhooks/mastodon")
        if not path.startswith("/"):
            raise ConfigError(wh.key("path"), f"{path!r} must start with /")
        webhooks = WebhookConfig(host=address[0], port=address[1], path=path, secret_env=secret_env, secret=secret)

    policy = _parse_policy(top.table("policy", frozenset({"rules", "trust", "default_trust",
                                                          "reverse_on_retraction", "review_poll_s"})),
                           report)

    wd = top.table("watchdog", _fields(WatchdogConfig))
    watchdog = WatchdogConfig(
        interval_s=wd.positive("interval_s", _default(WatchdogConfig, "interval_s")),
        stall_s=wd.positive("stall_s", _default(WatchdogConfig, "stall_s")),
        max_error_rate=wd.positive("max_error_rate", _default(WatchdogConfig, "max_error_rate")),
        min_attempts=wd.positive("min_attempts", _default(WatchdogConfig, "min_attempts"), int),
        notify_account=wd.get("notify_account", str, "").lstrip("@"),
        notify_url=wd.get("notify_url", str, ""),
    )
    if watchdog.max_error_rate > 1:
        raise ConfigError(wd.key("max_error_rate"), "is a fraction of attempts, at most 1")
    if watchdog.notify_url and urlsplit(watchdog.notify_url).scheme not in ("http", "https"):
        raise ConfigError(wd.key("notify_url"), f"{watchdog.notify_url!r} must be an http(s) URL")

    lg = top.table("logging", frozenset({"level"}))
    level = lg.get("level", str, "INFO").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(lg.key("level"), f"{level!r} is not one of DEBUG, INFO, WARNING, ERROR")
    return Config(instance=instance, store=store, media=media, workers=workers, report=report, banks=banks,
                  ops=ops, policy=policy, webhooks=webhooks, watchdog=watchdog,
                  log_level=level)


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


E = TypeVar("E", ActionType, Category, Trust)
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


def _parse_policy(table: _Table, report: ReportConfig) -> PolicyConfig:
    default_trust = _choice(table, "default_trust", Trust, table.get("default_trust", str, "unknown"))
    trust_table = table.get("trust", dict, {"local": "trusted"})
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
            parsed.append(_parse_rule(_Table(raw, f"{table.key('rules')}[{i}]", _RULE_KEYS), i, report))
        names = [r.name for r in parsed]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ConfigError(f"{table.key('rules')}[{i}].name", f"rule name {name!r} is used twice")
        rules = tuple(parsed)
    return PolicyConfig(
        rules=rules, trust=TrustMap(levels, default_trust),
        reverse_on_retraction=table.get("reverse_on_retraction", bool, False),
        review_poll_s=table.positive("review_poll_s", _default(PolicyConfig, "review_poll_s")),
    )


def _parse_rule(rule: _Table, index: int, report: ReportConfig) -> Rule:
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
    provisional = rule.get("provisional", bool, False)
    if provisional and not action.is_account_action:
        raise ConfigError(rule.key("provisional"),
                          f"only account actions (sensitive, silence, suspend) can be provisional, not {action}")
    max_distance = rule.get("max_distance", int, None)
    if max_distance is not None and max_distance < 0:
        raise ConfigError(rule.key("max_distance"), "must be 0 or more")
    min_quality = rule.get("min_quality", int, None)
    if min_quality is not None and not 0 <= min_quality <= 100:
        raise ConfigError(rule.key("min_quality"), "must be between 0 and 100")
    return Rule(
        name=rule.get("name", str, f"rule-{index + 1}"), action=action,
        categories=_choices(rule, "categories", Category), signal_types=None if signal_types is None
        else frozenset(signal_types), trust=_choices(rule, "trust", Trust),
        min_sources=rule.positive("min_sources", 1, int), max_distance=max_distance, min_quality=min_quality,
        scope=scope, forward=rule.get("forward", bool, None), notify=rule.get("notify", bool, False),
        comment=comment, provisional=provisional, review_s=rule.positive("review_within_s", 24 * 3600.0),
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
