"""Config: the shipped example loads, and every bad setting names its key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fedimod.config import load_config, parse_config
from fedimod.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
ENV = {"FEDIMOD_TOKEN": "secret-token"}


def minimal(**sections: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {"instance": {"base_url": "https://mastodon.example"}}
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return raw


def test_shipped_example_config_loads_with_the_documented_defaults() -> None:
    config = load_config(ROOT / "config/fedimod.toml", ENV)
    assert config.instance.base_url == "https://mastodon.example"
    assert config.instance.token == "secret-token"
    assert config.instance.streams == ("public:media",)
    assert (config.instance.stream_transport, config.instance.websocket_retry_s) == ("auto", 600.0)
    assert config.report.category == "legal" and not config.report.dry_run
    assert config.media.allow_hosts == ()  # nothing private is reachable by default
    assert "secret-token" not in repr(config)  # the token never shows up in a repr or log


@pytest.mark.parametrize(
    ("raw", "key", "fragment"),
    [
        ({}, "instance.base_url", "is required"),
        (minimal(instance={"base_url": "ftp://x"}), "instance.base_url", "http(s) URL"),
        (minimal(instance={"streams": ["user"]}), "instance.streams[0]", "not one of"),
        (minimal(instance={"streams": []}), "instance.streams", "at least one"),
        (minimal(instance={"stream_transport": "http2"}), "instance.stream_transport", "not one of"),
        (minimal(instance={"request_timeout_s": 0}), "instance.request_timeout_s", "greater than 0"),
        (minimal(instance={"request_timeout_s": True}), "instance.request_timeout_s", "expected a number"),
        (minimal(media={"max_bytes": "big"}), "media.max_bytes", "expected int"),
        (minimal(media={"max_redirects": 50}), "media.max_redirects", "between 0 and 10"),
        (minimal(media={"allow_hosts": [""]}), "media.allow_hosts[0]", "host name"),
        (minimal(workers={"concurrency": -1}), "workers.concurrency", "greater than 0"),
        (minimal(workers={"hash_processes": -2}), "workers.hash_processes", "one per core"),
        (minimal(report={"category": "illegal"}), "report.category", "not one of"),
        (minimal(report={"comment_template": "{status}"}), "report.comment_template", "cannot be rendered"),
        (minimal(report={"comment_template": "x" * 950}), "report.comment_template", "too long"),
        (minimal(report={"dry_run": "yes"}), "report.dry_run", "expected bool"),
        (minimal(logging={"level": "LOUD"}), "logging.level", "not one of"),
        (minimal(policy={"rules": [{"action": "disable"}]}), "policy.rules[0].scope", "local accounts only"),
        (minimal(media={"max_byte": 1}), "media.max_byte", "unknown setting"),
        (minimal(extra={"x": 1}), "extra", "unknown setting"),
    ],
)
def test_bad_setting_is_rejected_naming_its_key(raw: dict[str, Any], key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_config(raw, ENV)
    assert excinfo.value.path == key
    assert fragment in str(excinfo.value)


def test_missing_token_names_the_environment_variable() -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_config(minimal(instance={"token_env": "MY_BOT_TOKEN"}), {})
    assert excinfo.value.path == "instance.token_env"
    assert "MY_BOT_TOKEN" in str(excinfo.value)


def test_local_commands_load_config_without_the_token() -> None:
    config = parse_config(minimal(), {}, require_token=False)
    assert config.instance.token == ""


def test_unreadable_or_invalid_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.toml", ENV)
    bad = tmp_path / "bad.toml"
    bad.write_text("[instance\nbase_url = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, ENV)


def test_webhooks_are_off_by_default_and_need_a_secret_when_on() -> None:
    assert parse_config(minimal(), ENV).webhooks.host is None
    with pytest.raises(ConfigError) as caught:
        parse_config(minimal(webhooks={"listen": "127.0.0.1:9465"}), ENV)
    assert caught.value.path == "webhooks.secret_env"
    config = parse_config(minimal(webhooks={"listen": "127.0.0.1:9465"}),
                          {**ENV, "FEDIMOD_WEBHOOK_SECRET": "x" * 40})
    assert (config.webhooks.host, config.webhooks.port, config.webhooks.path) == ("127.0.0.1", 9465,
                                                                                  "/webhooks/mastodon")
    assert "x" * 40 not in repr(config)  # the secret never reaches a log line


def test_feed_sources_and_serving_are_read_and_their_trust_reaches_the_policy() -> None:
    key = "A6EHv_POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg"
    raw = minimal(feeds={"serve": {"listen": "127.0.0.1:9470", "key_file": "feed.pem"},
                         "sources": [{"name": "hub", "url": "https://hub.example", "feed": "members", "key": key,
                                      "trust": "known", "categories": ["csam"], "poll_interval_s": 60,
                                      "required": True, "token_env": "HUB_TOKEN"}]})
    config = parse_config(raw, {**ENV, "HUB_TOKEN": "t0ken"})
    (followed,) = config.feeds.sources
    assert (followed.source.name, followed.source.bank, followed.source.token, followed.required) == (
        "hub", "feed:hub", "t0ken", True)
    assert followed.stale_s == 180.0  # three polls
    assert (config.feeds.serve_host, config.feeds.serve_port) == ("127.0.0.1", 9470)
    assert config.policy.trust.level("hub").value == "known" and config.policy.trust.level("local").value == "trusted"
    assert "t0ken" not in repr(config)


def test_a_hub_source_relays_and_vouches_and_retro_settings_are_read() -> None:
    key, member = "A6EHv_POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg", "m" * 43
    raw = minimal(feeds={"serve": {"listen": "127.0.0.1:9470", "key_file": "feed.pem", "feeds": ["local"]},
                         "publish_confirmed": "local",
                         "sources": [{"name": "a", "url": "https://a.example", "feed": "a", "key": key,
                                      "relay_to": "hub", "members": [member]}]},
                  retro={"retention_days": 30, "max_share": 0.1, "min_hits": 4})
    config = parse_config(raw, ENV)
    (followed,) = config.feeds.sources
    assert (followed.source.relay_to, followed.source.members) == ("hub", frozenset({member}))
    assert (config.feeds.serve_feeds, config.feeds.publish_confirmed) == (frozenset({"local"}), "local")
    assert (config.retro.retention_days, config.retro.max_share, config.retro.min_hits,
            config.retro.max_accounts) == (30.0, 0.1, 4, 25)
    with pytest.raises(ConfigError) as caught:
        parse_config(minimal(retro={"max_share": "lots"}), ENV)
    assert caught.value.path == "retro.max_share"


def test_blocklist_settings_are_read_and_bad_ones_name_their_key() -> None:
    raw = minimal(blocklists={"mode": "min", "threshold": 50, "threshold_percent": True, "allowlist": ["*.ok.example"],
                              "allow_removals": True, "interval_s": 3600,
                              "sources": [{"name": "peer", "kind": "admin", "url": "https://peer.example",
                                           "token_env": "PEER_TOKEN", "weight": 2, "fields": ["reject_media"],
                                           "max_severity": "silence", "lenient": True}]})
    settings = parse_config(raw, {**ENV, "PEER_TOKEN": "s3cret"}).blocklists
    (source,) = settings.sources
    assert (settings.plan.mode, settings.plan.threshold, settings.plan.percent) == ("min", 50.0, True)
    assert (source.kind, source.token, source.policy.weight, source.policy.max_severity.value, source.lenient) == (
        "admin", "s3cret", 2.0, "silence", True)
    assert source.policy.fields == frozenset({"reject_media"}) and settings.allow_removals
    assert "s3cret" not in repr(settings)
    for bad, key in (({"mode": "mean"}, "blocklists.mode"),
                     ({"allowlist": ["not a domain"]}, "blocklists.allowlist"),
                     ({"sources": [{"name": "x", "kind": "rss", "url": "https://x.example"}]},
                      "blocklists.sources[0].kind"),
                     ({"sources": [{"name": "x", "kind": "instance", "url": "peer.example"}]},
                      "blocklists.sources[0].url"),
                     ({"sources": [{"name": "x", "kind": "csv", "path": "a.csv", "fields": ["severity"]}]},
                      "blocklists.sources[0].fields")):
        with pytest.raises(ConfigError) as caught:
            parse_config(minimal(blocklists=bad), ENV)
        assert caught.value.path == key, bad


@pytest.mark.parametrize(("feeds", "key", "fragment"), [
    ({"serve": {"listen": "127.0.0.1:9470"}}, "feeds.serve.key_file", "signing key"),
    ({"sources": [{"name": "hub", "url": "https://h.example", "feed": "f", "key": "short"}]},
     "feeds.sources[0].key", "Ed25519 public key"),
    ({"sources": [{"name": "local", "url": "https://h.example", "feed": "f", "key": "k" * 43}]},
     "feeds.sources[0].name", "'local'"),
    ({"sources": [{"name": "hub", "url": "ftp://h.example", "feed": "f", "key": "k" * 43}]},
     "feeds.sources[0].url", "http(s) URL"),
    ({"sources": [{"name": "hub", "url": "https://h.example", "feed": "f", "key": "k" * 43, "trust": "total"}]},
     "feeds.sources[0].trust", "not one of"),
    ({"sources": [{"name": "a", "url": "https://a.example", "feed": "f", "key": "k" * 43, "relay_to": "hub"}]},
     "feeds.sources[0].relay_to", "feed key"),
    ({"sources": [{"name": "hub", "url": "https://h.example", "feed": "f", "key": "k" * 43, "members": ["x"]}]},
     "feeds.sources[0].members", "43 base64url"),
    ({"publish_confirmed": "local"}, "feeds.publish_confirmed", "feed key"),
])
def test_bad_feed_settings_name_their_key(feeds: dict[str, Any], key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(minimal(feeds=feeds), ENV)
    assert caught.value.path == key and fragment in str(caught.value)
