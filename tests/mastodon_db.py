"""A Mastodon database for the media-store tests, on the PostgreSQL server this machine runs: the
tables fedimod reads, with the columns and types of Mastodon's db/schema.rb (media_attachments
as Mastodon 4 defines it; statuses and accounts as far as fedimod reads them, plus neighbours),
in a schema of the test's own, and the roles an admin would give fedimod.

Files are laid out as Mastodon lays them out (config/initializers/paperclip.rb): under the root,
`[cache/]media_attachments/files/<id partition>/original/<file_file_name>`.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

from fedimod.ingest.media_store import storage_key
from tests.postgres import BASE_URL, drop_schema, fresh_schema, with_schema

SCHEMA = """
CREATE TABLE accounts (
    id bigint PRIMARY KEY,
    username character varying DEFAULT '' NOT NULL,
    domain character varying,
    url character varying,
    uri character varying DEFAULT '' NOT NULL,
    display_name character varying DEFAULT '' NOT NULL,
    locked boolean DEFAULT false NOT NULL,
    created_at timestamp without time zone NOT NULL,
    updated_at timestamp without time zone NOT NULL
);
CREATE TABLE statuses (
    id bigint PRIMARY KEY,
    uri character varying,
    text text DEFAULT '' NOT NULL,
    created_at timestamp without time zone NOT NULL,
    updated_at timestamp without time zone NOT NULL,
    in_reply_to_id bigint,
    reblog_of_id bigint,
    url character varying,
    sensitive boolean DEFAULT false NOT NULL,
    visibility integer DEFAULT 0 NOT NULL,
    spoiler_text text DEFAULT '' NOT NULL,
    reply boolean DEFAULT false NOT NULL,
    language character varying,
    local boolean,
    account_id bigint NOT NULL,
    deleted_at timestamp without time zone,
    edited_at timestamp without time zone
);
CREATE TABLE media_attachments (
    id bigint PRIMARY KEY,
    status_id bigint,
    file_file_name character varying,
    file_content_type character varying,
    file_file_size integer,
    file_updated_at timestamp without time zone,
    remote_url character varying DEFAULT '' NOT NULL,
    created_at timestamp without time zone NOT NULL,
    updated_at timestamp without time zone NOT NULL,
    shortcode character varying,
    type integer DEFAULT 0 NOT NULL,
    file_meta json,
    account_id bigint,
    description text,
    scheduled_status_id bigint,
    blurhash character varying,
    processing integer,
    file_storage_schema_version integer,
    thumbnail_file_name character varying,
    thumbnail_content_type character varying,
    thumbnail_file_size integer,
    thumbnail_updated_at timestamp without time zone,
    thumbnail_remote_url character varying
);
CREATE INDEX index_media_attachments_on_status_id ON media_attachments (status_id);
"""
VISIBILITY = {"public": 0, "unlisted": 1, "private": 2, "direct": 3, "limited": 4}


@dataclass
class MastodonDB:
    schema: str
    url: str  # as the owner (a superuser here): for the test to write rows
    root: Path

    async def execute(self, sql: str, params: tuple[object, ...] = ()) -> None:
        async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
            await conn.execute(sql, params)

    async def account(self, account_id: int, username: str, domain: str | None = None) -> None:
        url = f"https://{domain or 'local.example'}/@{username}"
        await self.execute("INSERT INTO accounts (id, username, domain, url, uri, created_at, updated_at) "
                           "VALUES (%s, %s, %s, %s, %s, now(), now()) ON CONFLICT DO NOTHING",
                           (account_id, username, domain, url, url))

    async def status(self, status_id: int, account_id: int, visibility: str, *, local: bool,
                     deleted: bool = False) -> None:
        await self.execute(
            "INSERT INTO statuses (id, uri, created_at, updated_at, url, visibility, local, account_id, deleted_at) "
            "VALUES (%s, %s, now(), now(), %s, %s, %s, %s, CASE WHEN %s THEN now() END)",
            (status_id, f"https://x.example/statuses/{status_id}", f"https://x.example/@u/{status_id}",
             VISIBILITY[visibility], local, account_id, deleted))

    async def media(self, media_id: int, status_id: int | None, account_id: int, data: bytes | None, *,
                    remote: bool, file_name: str | None = None, age_s: float = 120.0, write_file: bool = True,
                    schema_version: int = 1) -> Path | None:
        """A media row, created `age_s` ago, and its file where Mastodon keeps it (None: not written)."""
        name = file_name if file_name is not None else f"{secrets.token_hex(8)}.jpg"
        await self.execute(
            "INSERT INTO media_attachments (id, status_id, account_id, file_file_name, file_content_type, "
            "file_file_size, remote_url, created_at, updated_at, type, file_storage_schema_version) "
            "VALUES (%s, %s, %s, %s, 'image/jpeg', %s, %s, now() - make_interval(secs => %s), now(), 0, %s)",
            (media_id, status_id, account_id, name if data is not None or file_name else None,
             len(data) if data else None, "https://remote.example/m.jpg" if remote else "", age_s, schema_version))
        if data is None or not write_file:
            return None
        path = self.root / storage_key(media_id, name, remote=remote, schema_version=schema_version)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    @asynccontextmanager
    async def role(self, *, can_write: bool = False) -> AsyncIterator[str]:
        """A login role on the tables (SELECT only, or also INSERT); its URL for the block."""
        name = f"fedimod_{'rw' if can_write else 'ro'}_{secrets.token_hex(4)}"
        grants = "SELECT, INSERT" if can_write else "SELECT"
        await self.execute(f'CREATE ROLE "{name}" LOGIN')
        try:
            await self.execute(f'GRANT USAGE ON SCHEMA "{self.schema}" TO "{name}"')
            await self.execute(f'GRANT {grants} ON media_attachments, statuses, accounts TO "{name}"')
            base = BASE_URL.replace("postgres@", f"{name}@", 1)
            yield with_schema(base, self.schema)
        finally:
            await self.execute(f'DROP OWNED BY "{name}"')
            await self.execute(f'DROP ROLE "{name}"')


@asynccontextmanager
async def mastodon_db(root: Path) -> AsyncIterator[MastodonDB]:
    schema, url = await fresh_schema()
    try:
        db = MastodonDB(schema=schema, url=url, root=root)
        await db.execute(SCHEMA)
        yield db
    finally:
        await drop_schema(schema)
