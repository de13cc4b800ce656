"""Act: turn matches into reports on the instance, exactly once each."""

from fedimod.act.mastodon import MastodonClient
from fedimod.act.report import build_report_request, report_key

__all__ = ["MastodonClient", "build_report_request", "report_key"]
