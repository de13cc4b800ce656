"""docker-compose.yml and its config start (deploy/compose.toml) describe a deployment that works:
every fedimod command in it is one the CLI accepts, the config it mounts parses to a PostgreSQL
store at the compose file's database, and the roles it runs are the ones `run` knows."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from fedimod.cli.main import build_parser
from fedimod.config import load_config

ROOT = Path(__file__).resolve().parent.parent


def _compose() -> dict[str, object]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def test_every_fedimod_service_runs_a_command_the_cli_accepts() -> None:
    services = _compose()["services"]
    assert isinstance(services, dict)
    fedimod = {name: s for name, s in services.items() if s.get("image", "").startswith("fedimod")}
    assert set(fedimod) == {"migrate", "fedimod", "worker"}
    roles = set()
    for service in fedimod.values():
        args = build_parser().parse_args(service["command"])
        assert args.config == Path("/etc/fedimod/fedimod.toml")
        roles.add(getattr(args, "role", None))
    assert roles == {None, "all", "worker"}
    # Every process waits for the schema: the migrate job ran before any `run` starts.
    assert fedimod["fedimod"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert fedimod["worker"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_the_config_start_reads_the_store_url_the_compose_file_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    services = _compose()["services"]
    assert isinstance(services, dict)
    url_template = services["fedimod"]["environment"]["FEDIMOD_STORE_URL"]
    url = url_template.replace("${FEDIMOD_DB_PASSWORD:?set FEDIMOD_DB_PASSWORD in .env}", "s3cret")
    parts = urlsplit(url)
    assert parts.hostname == "postgres" and "postgres" in services and parts.path == "/fedimod"
    assert services["postgres"]["environment"]["POSTGRES_DB"] == "fedimod"
    monkeypatch.setenv("FEDIMOD_STORE_URL", url)
    monkeypatch.setenv("FEDIMOD_TOKEN", "t")
    config = load_config(ROOT / "deploy" / "compose.toml")
    assert config.store.is_postgres and config.store.url == url
    assert "s3cret" not in config.store.describe()
    assert (config.ops.host, config.ops.port) == ("127.0.0.1", 9464)  # where the image's HEALTHCHECK asks
    assert "127.0.0.1:9464/healthz" in (ROOT / "Dockerfile").read_text()
