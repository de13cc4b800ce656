"""Admin webhooks: events signed and delivered as Mastodon's delivery worker does, retried on 5xx."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Iterable
from email.utils import formatdate
from typing import Any

import aiohttp

from fedimod.sandbox.base import SandboxBase
from fedimod.sandbox.state import (
    iso,
)


class WebhooksMixin(SandboxBase):
    def add_webhook(self, url: str, secret: str,
                    events: Iterable[str] = ("status.created", "status.updated", "report.created")) -> None:
        """Deliver these events to `url`, signed as Mastodon signs them (Mastodon's
        app/workers/webhooks/delivery_worker.rb and app/helpers/json_ld_helper.rb)."""
        self.webhooks.append((url, secret, frozenset(events)))

    def _emit(self, event: str, obj: dict[str, Any]) -> None:
        # Compact JSON with UTF-8 as it is, as Mastodon's serializer writes it: a receiver that
        # re-serialises before checking the HMAC fails here as it would against Mastodon.
        body = json.dumps({"event": event, "created_at": iso(time.time()), "object": obj},
                          separators=(",", ":"), ensure_ascii=False).encode()
        for url, secret, events in self.webhooks:
            if event in events:
                task = asyncio.get_running_loop().create_task(self._deliver(url, secret, event, body))
                self._deliveries.add(task)
                task.add_done_callback(self._deliveries.discard)

    async def _deliver(self, url: str, secret: str, event: str, body: bytes) -> None:
        """Deliver, and deliver again as Sidekiq retries (Mastodon's app/workers/webhooks/delivery_worker.rb and
        app/helpers/json_ld_helper.rb): on 5xx other than 501,
        401, 408, 429 and connection errors; never on other 4xx. Backoff `webhook_retry_s · 2^n`."""
        if self._webhook_client is None:
            self._webhook_client = aiohttp.ClientSession()
        digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        headers = {"Content-Type": "application/json", "X-Hub-Signature": f"sha256={digest}",
                   "User-Agent": "Mastodon/4.5.0 (sandbox)", "Accept-Encoding": "gzip",
                   "Date": formatdate(usegmt=True)}
        for attempt in range(self.webhook_retries + 1):
            try:
                async with self._webhook_client.post(url, data=body, headers=headers,
                                                     timeout=aiohttp.ClientTimeout(total=30)) as response:
                    status = response.status
            except (aiohttp.ClientError, TimeoutError):
                status = 0
            self.webhook_deliveries.append((event, status))
            retried = status == 0 or (status >= 500 and status != 501) or status in (401, 408, 429)
            if 200 <= status < 300 or not retried:
                return
            await asyncio.sleep(self.webhook_retry_s * 2 ** attempt)
