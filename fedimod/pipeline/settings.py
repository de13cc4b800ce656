"""What the pipeline is configured with: the instance it follows, its workers, and each stage's
settings (each defined by its stage). `fedimod.config` builds a `Config` from TOML."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedimod.act.policy import PolicySettings
from fedimod.act.report import ReportSettings
from fedimod.blocklists.sync import BlocklistSettings
from fedimod.feeds.follow import FeedsSettings
from fedimod.ingest.media_store import MediaStoreSettings
from fedimod.ingest.webhook import WebhookSettings
from fedimod.match.settings import BankSettings
from fedimod.media.settings import MediaSettings
from fedimod.ops.server import OpsSettings
from fedimod.ops.watchdog import WatchdogSettings
from fedimod.pipeline.retro import RetroSettings
from fedimod.store.settings import StoreSettings

# The streams fedimod can follow (Mastodon's public ones; user streams carry no strangers' media).
STREAMS = ("public", "public:local", "public:remote", "public:media", "public:local:media", "public:remote:media")


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceSettings:
    """`[instance]`: the instance, the bot's token, how its streams and timelines are read, and the
    client-side API budget of the token."""

    base_url: str
    token_env: str = "FEDIMOD_TOKEN"
    token: str = field(default="", repr=False)
    streams: tuple[str, ...] = ("public:media",)
    request_timeout_s: float = 30.0
    reconnect_max_s: float = 60.0
    sweep_window_s: float = 24 * 3600.0
    sweep_interval_s: float = 600.0
    # "auto": WebSocket, falling back to SSE when upgrades are refused; or force "websocket"/"sse".
    stream_transport: str = "auto"
    websocket_retry_s: float = 600.0
    # Mastodon allows 300 calls per 5 minutes per token.
    api_budget: int = 300
    api_budget_window_s: float = 300.0
    # Calls of each window kept back for actions: lookups and syncs stop short of them.
    api_action_reserve: int = field(default=50, metadata={"min": 0})


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerSettings:
    """`[workers]`."""

    concurrency: int = 4
    hash_processes: int = field(default=0, metadata={"min": 0, "why": "must be 0 (one per core) or a positive count"})
    max_attempts: int = 5
    lease_s: float = 120.0
    retry_delay_s: float = 5.0
    shutdown_grace_s: float = 20.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    instance: InstanceSettings
    store: StoreSettings = field(default_factory=StoreSettings)
    media: MediaSettings = field(default_factory=MediaSettings)
    workers: WorkerSettings = field(default_factory=WorkerSettings)
    report: ReportSettings = field(default_factory=ReportSettings)
    banks: BankSettings = field(default_factory=BankSettings)
    ops: OpsSettings = field(default_factory=lambda: OpsSettings(host=None))
    policy: PolicySettings = field(default_factory=PolicySettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    watchdog: WatchdogSettings = field(default_factory=WatchdogSettings)
    feeds: FeedsSettings = field(default_factory=FeedsSettings)
    retro: RetroSettings = field(default_factory=RetroSettings)
    blocklists: BlocklistSettings = field(default_factory=BlocklistSettings)
    media_store: MediaStoreSettings = field(default_factory=MediaStoreSettings)
    log_level: str = "INFO"
