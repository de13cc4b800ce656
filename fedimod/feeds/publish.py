"""Publishing what this instance's moderators confirmed: the hashes of the confirmed media as
`add` entries, and a `confirmed` verdict on each entry that caused the action."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from fedimod.feeds.protocol import SigningKey, make_entry, make_verdict
from fedimod.models import Category, Signal, Verdict
from fedimod.signals import REGISTRY
from fedimod.store import FeedRepository


async def publish_confirmed(store: FeedRepository, key: SigningKey, feed: str, *,
                            media: Sequence[tuple[Signal, Category]], causes: Sequence[tuple[str, int]],
                            now: float | None = None) -> list[dict[str, Any]]:
    """Publish each confirmed hash (never a degenerate one) and a verdict on each cause; the
    entries published, in order. Nothing names the post or the account."""
    added_at = int(time.time() if now is None else now)
    published = []
    for signal, category in media:
        kind = REGISTRY[signal.signal_type]
        if kind.is_degenerate(signal.value) or (kind.min_quality is not None and signal.quality is not None
                                                and signal.quality < kind.min_quality):
            continue
        text = kind.format(signal.value)

        def add(seq: int, signal_type: str = signal.signal_type, value: str = text,
                category: Category = category, quality: int | None = signal.quality) -> dict[str, Any]:
            return key.sign(make_entry(feed=feed, seq=seq, op="add", signal_type=signal_type, value=value,
                                       category=category, added_at=added_at, note="confirmed by a moderator",
                                       quality=quality))
        published.append(await store.publish_feed_entry(feed, add))
    for signal_type, value in causes:
        def confirm(seq: int, signal_type: str = signal_type, value: str = REGISTRY[signal_type].format(value)
                    ) -> dict[str, Any]:
            return key.sign(make_verdict(feed=feed, seq=seq, signal_type=signal_type, value=value,
                                         verdict=Verdict.CONFIRMED, added_at=added_at))
        published.append(await store.publish_feed_entry(feed, confirm))
    return published
