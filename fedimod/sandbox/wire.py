"""Request and response helpers the sandbox's handlers share: tokens, limits, paging and `Link`
headers, escaping, file names and image sizes."""

from __future__ import annotations

import io
import re
from typing import Any
from urllib.parse import urlencode

from aiohttp import web


def _token_text(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    return request.query.get("access_token") or None


def _limit(raw: str | None, *, default: int, maximum: int) -> int:
    try:
        value = int(raw) if raw else default
    except ValueError:
        value = default
    return max(1, min(value, maximum))


def _paginate(items: list[Any], q: Any, limit: int) -> list[Any]:
    """Mastodon's paginate_by_id: max_id/since_id bound the range, min_id pages upward; newest first."""
    def bound(name: str) -> int | None:
        raw = q.get(name)
        return int(raw) if raw and raw.isdigit() else None

    max_id, since_id, min_id = bound("max_id"), bound("since_id"), bound("min_id")
    selected = [i for i in items if (max_id is None or i.id < max_id) and (since_id is None or i.id > since_id)
                and (min_id is None or i.id > min_id)]
    selected.sort(key=lambda i: i.id)
    if min_id is not None:
        page = selected[:limit]
    else:
        page = selected[-limit:]
    return list(reversed(page))


def _link(response: web.StreamResponse, request: web.Request, page: list[Any], *, full_only_next: bool,
          limit: int | None = None) -> None:
    if not page:
        return
    keep = {k: v for k, v in request.query.items() if k not in ("max_id", "min_id", "since_id")}
    base = f"{request.scheme}://{request.host}{request.path}"
    links = []
    if not full_only_next or (limit is not None and len(page) >= limit):
        links.append(f'<{base}?{urlencode(sorted({**keep, "max_id": str(page[-1].id)}.items()))}>; rel="next"')
    links.append(f'<{base}?{urlencode(sorted({**keep, "min_id": str(page[0].id)}.items()))}>; rel="prev"')
    response.headers["Link"] = ", ".join(links)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _safe_name(name: str | None) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", name or "file")
    return cleaned[-64:] or "file"


def _image_size(data: bytes) -> tuple[int | None, int | None]:
    """Dimensions for `meta`; the sandbox reads them with Pillow but never needs them to be right."""
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception:
        return None, None

