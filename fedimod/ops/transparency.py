"""Transparency report: what fedimod scanned, matched and did over a period, from the audit log.

Every action figure comes from the audit log (not from counters), so the published page can be
checked line by line against it: a media match is a `decision` line; an action is a `report` line
that was sent or reconciled, or an `account_action` line applied or reconciled (dry runs excluded);
a retraction is a `retraction` line; a rollback is a `rollback` line, told apart by its review
outcome. Time to action runs from the post's own `created_at` to its first action.

Three renderings: text for the terminal, JSON for tools, and one self-contained HTML page (inline
SVG charts, no script, no external resource) that an admin can publish as is.
"""

from __future__ import annotations

import html
import json
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from fedimod.store import AuditRepository
from fedimod.store.protocols import CoverageRepository


class ReportSource(AuditRepository, CoverageRepository, Protocol):
    """What the report reads: the audit log, and the media the instance stored (coverage)."""

ACTED = {"report": {"sent", "reconciled"}, "account_action": {"applied", "reconciled"}}
HISTOGRAM_EDGES_S = (60, 300, 900, 3600, 6 * 3600, 24 * 3600)


@dataclass(frozen=True, slots=True, kw_only=True)
class TransparencyReport:
    since: str
    until: str
    posts_scanned: int
    media_scanned: int
    media_matched: int
    matches_by_category: dict[str, int]
    matches_by_source: dict[str, int]
    actions_by_type: dict[str, int]
    retracted: int
    rejected_by_moderator: int
    expired_unreviewed: int
    time_to_action_median_s: float | None
    time_to_action_p95_s: float | None
    time_to_action_histogram: dict[str, int]
    daily_matches: dict[str, int]
    # Of the media the instance itself stored in the period (read by the media-store channel):
    # how much, how much was scanned, by which channel, and why the rest was not. Zero stored
    # when that channel is not configured: coverage is then unknown, not 100 %.
    media_stored: int = 0
    stored_media_scanned: int = 0
    scanned_by_channel: dict[str, int] | None = None
    not_scanned: dict[str, int] | None = None

    def as_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def _parse_time(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def _bucket(seconds: float) -> str:
    previous = 0
    for edge in HISTOGRAM_EDGES_S:
        if seconds < edge:
            return f"{_duration(previous)}–{_duration(edge)}"
        previous = edge
    return f"≥ {_duration(previous)}"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.1f} d"


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0–100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


async def build_report(store: ReportSource, *, since: float, until: float) -> TransparencyReport:
    rows = [r for r in await store.audit_rows(since=since) if r.at <= until]
    scanned = await store.scan_counts(since)
    by_category: Counter[str] = Counter()
    by_source: Counter[str] = Counter()
    daily: Counter[str] = Counter()
    actions: Counter[str] = Counter()
    first_action: dict[str, float] = {}
    matched = retracted = rejected = expired = 0
    for row in rows:
        line = row.event
        event, detail = line.event, line.detail
        if event == "decision":
            matched += 1
            entries = detail.get("matches", [])
            by_category.update({e["category"] for e in entries})
            by_source.update({e["source"] for e in entries})
            daily[datetime.fromtimestamp(row.at, UTC).date().isoformat()] += 1
        elif event in ACTED and line.result in ACTED[event] and not line.dry_run and line.action is not None:
            actions[line.action] += 1
            if line.status_id is not None:
                first_action.setdefault(line.status_id, row.at)
        elif event == "retraction":
            retracted += 1
        elif event == "rollback":
            review = detail.get("review")
            rejected += review == "rejected"
            expired += review == "expired"
    created = await store.post_created_at(list(first_action))
    delays = [max(0.0, at - t) for sid, at in first_action.items()
              if (t := _parse_time(created.get(sid, ""))) is not None]
    histogram = Counter(_bucket(d) for d in delays)
    coverage = await store.coverage(since=since, until=until)
    by_channel: Counter[str] = Counter()
    missed: Counter[str] = Counter()
    for c in coverage:
        if c.outcome == "scanned":
            by_channel[c.channel or "unknown"] += c.media
        else:
            missed[f"{c.outcome}: {c.reason}" if c.reason else c.outcome] += c.media
    return TransparencyReport(
        since=datetime.fromtimestamp(since, UTC).isoformat(timespec="seconds"),
        until=datetime.fromtimestamp(until, UTC).isoformat(timespec="seconds"),
        posts_scanned=scanned.posts, media_scanned=scanned.media_hashed, media_matched=matched,
        matches_by_category=dict(sorted(by_category.items())), matches_by_source=dict(sorted(by_source.items())),
        actions_by_type=dict(sorted(actions.items())), retracted=retracted, rejected_by_moderator=rejected,
        expired_unreviewed=expired,
        time_to_action_median_s=round(statistics.median(delays), 3) if delays else None,
        time_to_action_p95_s=round(percentile(delays, 95), 3) if delays else None,
        time_to_action_histogram={label: histogram[label] for label in _labels() if histogram[label]},
        daily_matches=dict(sorted(daily.items())),
        media_stored=sum(c.media for c in coverage), stored_media_scanned=sum(by_channel.values()),
        scanned_by_channel=dict(sorted(by_channel.items())), not_scanned=dict(sorted(missed.items())),
    )


def _labels() -> list[str]:
    return [_bucket(edge - 1) for edge in HISTOGRAM_EDGES_S] + [_bucket(HISTOGRAM_EDGES_S[-1])]


def render_text(report: TransparencyReport) -> str:
    def fmt(seconds: float | None) -> str:
        return "-" if seconds is None else f"{seconds:.1f} s"

    lines = [
        f"fedimod transparency report, {report.since} to {report.until}",
        f"posts scanned          {report.posts_scanned}",
        f"media scanned          {report.media_scanned}",
        f"media matched          {report.media_matched}",
        "matches by category    " + _pairs(report.matches_by_category),
        "matches by source      " + _pairs(report.matches_by_source),
        "actions by type        " + _pairs(report.actions_by_type),
        f"retracted              {report.retracted}",
        f"rejected by moderator  {report.rejected_by_moderator}",
        f"expired unreviewed     {report.expired_unreviewed}",
        f"time to action         median {fmt(report.time_to_action_median_s)}, "
        f"p95 {fmt(report.time_to_action_p95_s)}",
    ]
    if report.media_stored:
        lines += [f"coverage               {report.stored_media_scanned} of {report.media_stored} stored media scanned "
                  f"({report.stored_media_scanned / report.media_stored:.1%})",
                  "scanned by channel     " + _pairs(report.scanned_by_channel or {}),
                  "not scanned            " + _pairs(report.not_scanned or {})]
    return "\n".join(lines) + "\n"


def _pairs(values: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in values.items()) or "none"


def _bars(title: str, values: dict[str, int], metric: str) -> str:
    """A horizontal bar chart as inline SVG; each bar carries its label and value as data."""
    width, row_h, label_w = 640, 26, 150
    peak = max(values.values(), default=0) or 1
    parts = [f'<figure><figcaption>{html.escape(title)}</figcaption>',
             f'<svg role="img" data-chart="{html.escape(metric)}" width="{width}" '
             f'height="{max(1, len(values)) * row_h + 8}" '
             f'xmlns="http://www.w3.org/2000/svg">']
    if not values:
        parts.append('<text x="0" y="18">none in this period</text>')
    for i, (label, value) in enumerate(values.items()):
        y = i * row_h + 4
        bar = int((width - label_w - 60) * value / peak)
        parts.append(
            f'<g data-label="{html.escape(label)}" data-value="{value}">'
            f'<text x="0" y="{y + 15}">{html.escape(label)}</text>'
            f'<rect x="{label_w}" y="{y}" width="{max(bar, 1)}" height="{row_h - 8}" fill="#3b6ea5"/>'
            f'<text x="{label_w + bar + 6}" y="{y + 15}">{value}</text></g>')
    parts.append("</svg></figure>")
    return "".join(parts)


def render_html(report: TransparencyReport) -> str:
    def cell(metric: str, value: Any) -> str:
        shown = "–" if value is None else value
        return f'<td data-metric="{html.escape(metric)}">{html.escape(str(shown))}</td>'

    def table(title: str, values: dict[str, int], metric: str) -> str:
        rows = "".join(f"<tr><th>{html.escape(k)}</th>{cell(f'{metric}.{k}', v)}</tr>" for k, v in values.items())
        return f"<h2>{html.escape(title)}</h2><table>{rows or '<tr><td>none</td></tr>'}</table>"

    summary = [
        ("Posts scanned", "posts_scanned", report.posts_scanned),
        ("Media scanned", "media_scanned", report.media_scanned),
        ("Media matched", "media_matched", report.media_matched),
        ("Retracted (bank entry withdrawn or allowlisted)", "retracted", report.retracted),
        ("Rejected by a moderator", "rejected_by_moderator", report.rejected_by_moderator),
        ("Provisional, expired unreviewed", "expired_unreviewed", report.expired_unreviewed),
        ("Time to action, median (s)", "time_to_action_median_s", report.time_to_action_median_s),
        ("Time to action, p95 (s)", "time_to_action_p95_s", report.time_to_action_p95_s),
    ]
    rows = "".join(f"<tr><th>{html.escape(label)}</th>{cell(metric, value)}</tr>" for label, metric, value in summary)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>fedimod transparency report</title>
<style>
body {{ font: 15px/1.45 system-ui, sans-serif; max-width: 760px; margin: 2em auto; color: #1d1d1f; }}
table {{ border-collapse: collapse; margin-bottom: 1em; }}
th, td {{ text-align: left; padding: 3px 14px 3px 0; border-bottom: 1px solid #ddd; }}
td {{ font-variant-numeric: tabular-nums; }}
figure {{ margin: 1em 0; }} figcaption {{ font-weight: 600; margin-bottom: .4em; }}
svg text {{ font: 13px system-ui, sans-serif; fill: #1d1d1f; }}
</style></head><body>
<h1>Transparency report</h1>
<p>From <time data-metric="since">{report.since}</time> to <time data-metric="until">{report.until}</time>.
Automated hash matching of media posted to this instance. No media is stored or shared; only hashes.</p>
<table>{rows}</table>
{table("Media matched, by category", report.matches_by_category, "matches_by_category")}
{table("Media matched, by feed source", report.matches_by_source, "matches_by_source")}
{table("Actions taken, by type", report.actions_by_type, "actions_by_type")}
{_coverage_html(report, cell, table)}
{_bars("Time from post to action", report.time_to_action_histogram, "time_to_action_histogram")}
{_bars("Matches per day", report.daily_matches, "daily_matches")}
</body></html>
"""


def _coverage_html(report: TransparencyReport, cell: Callable[[str, Any], str],
                   table: Callable[[str, dict[str, int], str], str]) -> str:
    if not report.media_stored:
        return ("<h2>Coverage</h2><p>Unknown: the media-store channel is not configured, so the share of the "
                "media this instance stored that was scanned is not measured.</p>")
    share = f"{report.stored_media_scanned / report.media_stored:.1%}"
    return (f"<h2>Coverage</h2><table><tr><th>Media the instance stored</th>{cell('media_stored', report.media_stored)}"
            f"</tr><tr><th>Of which scanned</th>{cell('stored_media_scanned', report.stored_media_scanned)}</tr>"
            f"<tr><th>Share scanned</th>{cell('coverage_share', share)}</tr></table>"
            + table("Scanned, by channel", report.scanned_by_channel or {}, "scanned_by_channel")
            + table("Not scanned, by reason", report.not_scanned or {}, "not_scanned"))
