"""The moderation commands of `fedimod`: policy check, audit, review, incident export, report."""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import re
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from fedimod.config import Config, load_config
from fedimod.errors import ConfigError, FedimodError
from fedimod.models import BankEntry, Category, Match, MediaRecord
from fedimod.outputs import csv_cell, scrub_urls
from fedimod.signals import QUALITY_TYPE, REGISTRY, quality_of

AddConfig = Callable[[argparse.ArgumentParser], None]
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: float | None = None) -> float:
    """'30d', '12h', '90m', '45s' before now, or an ISO date/time; epoch seconds."""
    now = time.time() if now is None else now
    if m := _DURATION.match(text.strip()):
        return now - float(m.group(1)) * _UNIT_S[m.group(2)]
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (30d, 12h, 90m) or an ISO date") from None


def register(sub: Any, add_config: AddConfig) -> None:
    policy = sub.add_parser("policy", help="check the policy rules", description="Policy commands.")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    check = policy_sub.add_parser(
        "check", help="validate the config and show which rule fires for sample matches",
        description="Validate the config's [policy] section, then, for each sample match, print which rule fires "
                    "and why every earlier rule did not. Built-in samples cover each category, trust level and "
                    "corroboration; add your own with --sample.")
    check.add_argument("--sample", action="append", default=[], metavar="SPEC",
                       help="a sample match: category=csam,signal=pdq,distance=12,quality=80,"
                            "sources=local+hub.example,scope=remote (repeatable)")
    add_config(check)

    audit = sub.add_parser("audit", help="list the audit log",
                           description="List the append-only audit log: decisions, reports, account actions, "
                                       "escalations, retractions, reviews and rollbacks.")
    audit.add_argument("--since", type=parse_since, help="only lines since (30d, 12h, or an ISO date)")
    audit.add_argument("--status", help="only lines about this status id")
    audit.add_argument("--caused-by", metavar="ENTRY",
                       help="only the reports and actions a bank entry caused: its id, or TYPE:HEX (pdq:…)")
    audit.add_argument("--limit", type=int, help="only the last N lines")
    audit.add_argument("--format", choices=("text", "json", "csv"), default="text", help="output format")
    add_config(audit)

    review = sub.add_parser("review", help="confirm or reject provisional actions",
                            description="Provisional actions are applied at once and undone unless a moderator "
                                        "confirms them in time (or resolves the linked report on the instance).")
    review_sub = review.add_subparsers(dest="review_command", required=True, metavar="ACTION")
    add_config(review_sub.add_parser("list", help="list provisional actions awaiting review"))
    for verb, text in (("confirm", "make a provisional action stand"),
                       ("reject", "undo a provisional action now, through the admin API")):
        verb_parser = review_sub.add_parser(verb, help=text)
        verb_parser.add_argument("action_id", type=int, help="the action's id (from `fedimod review list`)")
        add_config(verb_parser)

    incident = sub.add_parser("incident", help="export what a hotline report needs",
                              description="Incident commands.")
    incident_sub = incident.add_subparsers(dest="incident_command", required=True, metavar="ACTION")
    export = incident_sub.add_parser(
        "export", help="write one matched post's incident record as JSON (never its media)",
        description="Write the post URL, account, timestamps, hashes, matched feed entries, reports, actions and "
                    "audit trail of one post as JSON. Never the media, nor its URL: only hashes and metadata.")
    export.add_argument("status_id", help="the post's status id")
    export.add_argument("-o", "--output", type=Path, help="output file (default: standard output)")
    add_config(export)

    report = sub.add_parser("report", help="transparency report (text, JSON or HTML)",
                            description="Posts and media scanned, matches by category and source, actions by type, "
                                        "retractions and time to action, from the audit log.")
    report.add_argument("--since", type=parse_since, default="30d", help="period start (default: 30d)")
    report.add_argument("--format", choices=("text", "json", "html"), default="text", help="output format")
    report.add_argument("-o", "--output", type=Path, help="output file (default: standard output)")
    add_config(report)


def dispatch(args: argparse.Namespace) -> int | None:
    """Run a moderation command; None when `args` is not one."""
    handlers: dict[str, Callable[[Config, argparse.Namespace], Any]] = {
        "audit": _audit, "review": _review, "incident": _incident, "report": _report,
    }
    if args.command == "policy":
        return _policy_check(load_config(args.config, require_token=False), args)
    if args.command not in handlers:
        return None
    needs_token = args.command == "review" and args.review_command == "reject"
    config = load_config(args.config, require_token=needs_token)
    result: int = asyncio.run(handlers[args.command](config, args))
    return result


def _write(text: str, output: Path | None) -> None:
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")


# -- policy check ---------------------------------------------------------------------------------

def _sample_evidence(spec: str) -> tuple[str, Any]:
    from fedimod.act.policy import Evidence
    from fedimod.signals import signal_type_named

    fields = {"category": "csam", "signal": QUALITY_TYPE.name, "distance": "0", "quality": "100", "sources": "local",
              "scope": "local"}
    for part in filter(None, spec.split(",")):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in fields:
            raise ConfigError("--sample", f"{part!r}: use KEY=VALUE with keys {', '.join(fields)}")
        fields[key.strip()] = value.strip()
    try:
        category = Category(fields["category"])
        signal = signal_type_named(fields["signal"]).name
        distance, quality = int(fields["distance"]), int(fields["quality"])
    except ValueError as exc:
        raise ConfigError("--sample", f"{spec!r}: {exc}") from None
    if fields["scope"] not in ("local", "remote"):
        raise ConfigError("--sample", f"{spec!r}: scope is local or remote")
    matches = tuple(
        Match(entry=BankEntry(id=i, bank="sample", signal_type=signal, value=0, category=category, source=source),
              signal_type=signal, distance=distance, threshold=max(distance, 31))
        for i, source in enumerate(fields["sources"].split("+"), start=1))
    evidence = Evidence(matches=matches, quality=quality if REGISTRY[signal].reports_quality else None,
                        is_local=fields["scope"] == "local")
    label = ", ".join(f"{k}={v}" for k, v in fields.items())
    return label, evidence


BUILTIN_SAMPLES = (
    "category=csam,signal=pdq,distance=4,quality=95,sources=local,scope=remote",
    "category=csam,signal=pdq,distance=20,quality=60,sources=hub+peer,scope=local",
    "category=csam,signal=md5,distance=0,sources=unknown-feed,scope=remote",
    "category=ncii,signal=pdq,distance=10,quality=90,sources=local,scope=local",
    "category=terror,signal=phash,distance=6,sources=hub,scope=remote",
    "category=spam,signal=md5,distance=0,sources=local,scope=local",
    "category=other,signal=pdq,distance=30,quality=40,sources=peer,scope=remote",
)


def _policy_check(config: Config, args: argparse.Namespace) -> int:
    from fedimod.act.policy import Policy

    policy = Policy(config.policy.rules, config.policy.trust)
    print(f"config OK: {len(policy.rules)} rule(s); trust: "
          + ", ".join(f"{s}={t}" for s, t in sorted(policy.trust.levels.items()))
          + f"; other sources {policy.trust.default}; reverse_on_retraction={config.policy.reverse_on_retraction}")
    for rule in policy.rules:
        extra = f" provisional (review within {rule.review_s:.0f} s)" if rule.provisional else ""
        print(f"  rule {rule.name}: {rule.action}{extra}")
    for spec in args.sample or BUILTIN_SAMPLES:
        label, evidence = _sample_evidence(spec)
        decision = policy.decide(evidence)
        print(f"\nsample {label}\n  -> {decision.action} by {decision.rule_name}: {decision.reason}")
        for rule, fires, why in policy.trace(evidence):
            print(f"     {'fires' if fires else 'skip '} {rule.name}: {why}")
            if fires:
                break
    return 0


# -- audit ----------------------------------------------------------------------------------------

async def _audit(config: Config, args: argparse.Namespace) -> int:
    from fedimod.signals import signal_type_named
    from fedimod.store import open_store

    async with open_store(config.store) as store:
        keys = None
        if args.caused_by:
            entry = args.caused_by.strip()
            if entry.isdigit():
                keys = await store.keys_caused_by(entry_id=int(entry))
            else:
                kind, sep, value = entry.partition(":")
                if not sep:
                    raise ConfigError("--caused-by", f"{entry!r}: give an entry id or TYPE:HEX")
                signal = signal_type_named(kind)
                keys = await store.keys_caused_by(signal_type=signal.name, value=signal.format(signal.parse(value)))
        rows = [r.as_dict() for r in
                await store.audit_rows(since=args.since, keys=keys, status_id=args.status, limit=args.limit)]
    if args.format == "json":
        for row in rows:
            print(json.dumps(row, sort_keys=True))
    elif args.format == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["id", "at", "event", "key", "status_id", "account_id", "action", "rule", "result",
                         "dry_run", "detail"])
        for row in rows:
            writer.writerow([csv_cell(v) for v in (
                row["id"], datetime.fromtimestamp(row["at"]).astimezone().isoformat(timespec="seconds"),
                row["event"], row["key"], row["status_id"], row["account_id"], row["action"], row["rule"],
                row["result"], int(row["dry_run"]), json.dumps(row["detail"], sort_keys=True))])
        sys.stdout.write(out.getvalue())
    else:
        for row in rows:
            when = datetime.fromtimestamp(row["at"]).astimezone().isoformat(timespec="seconds")
            dry = " [dry run]" if row["dry_run"] else ""
            print(f"{row['id']:>6} {when} {row['event']:<15} {row['action'] or '-':<9} status {row['status_id'] or '-'}"
                  f" account {row['account_id'] or '-'} rule {row['rule'] or '-'}: {row['result'] or ''}{dry}")
        if keys is not None and not rows:
            print(f"no report or action was caused by {args.caused_by}")
    return 0


# -- review ---------------------------------------------------------------------------------------

async def _review(config: Config, args: argparse.Namespace) -> int:
    from fedimod.models import AuditEvent, ReviewState
    from fedimod.store import open_store

    async with open_store(config.store) as store:
        if args.review_command == "list":
            pending = await store.awaiting_review()
            for waiting in pending:
                left = (waiting.review_by or 0) - time.time()
                print(f"{waiting.id:>5} {waiting.request.action:<9} account {waiting.request.account_id} "
                      f"status {waiting.request.status_id} rule {waiting.request.rule} report "
                      f"{waiting.remote_report_id or '-'}; undone in {max(0, left):.0f} s unless confirmed")
            if not pending:
                print("no provisional action awaits review")
            return 0
        action = await store.action(args.action_id)
        if action is None or action.review_state is not ReviewState.AWAITING:
            state = "no such action" if action is None else f"review is {action.review_state or 'not provisional'}"
            raise FedimodError(f"action {args.action_id} cannot be reviewed: {state}")
        request = action.request
        if args.review_command == "confirm":
            event = AuditEvent(event="review_confirmed", key=request.idempotency_key, status_id=request.status_id,
                               account_id=request.account_id, action=request.action.value, rule=request.rule,
                               result="confirmed with fedimod review", detail={"action_id": action.id})
            if not await store.set_review(action.id, ReviewState.AWAITING, ReviewState.CONFIRMED, event):
                raise FedimodError(f"action {action.id} was decided meanwhile; see `fedimod audit`")
            print(f"action {action.id} ({request.action} of account {request.account_id}) confirmed")
            feed = config.feeds.publish_confirmed
            if feed:
                from fedimod.feeds.protocol import SigningKey
                from fedimod.feeds.publish import publish_confirmed

                media, causes = await store.confirmed_hashes(request.idempotency_key)
                published = await publish_confirmed(store, SigningKey.load(Path(config.feeds.key_file)), feed,
                                                    media=media, causes=causes)
                print(f"published {len(published)} entries on feed '{feed}' ({len(media)} confirmed hashes, "
                      f"{len(causes)} confirmed verdicts); no post or account is named in them")
            return 0
        from fedimod.act import MastodonClient
        from fedimod.act.executor import ActionExecutor
        from fedimod.pipeline.service import budget_for

        actions = MastodonClient(base_url=config.instance.base_url, token=config.instance.token,
                                  request_timeout_s=config.instance.request_timeout_s, budget=budget_for(config))
        executor = ActionExecutor(store=store, actions=actions, category=config.report.category,
                                  forward=config.report.forward, dry_run=config.report.dry_run)
        if not await executor.roll_back(action, ReviewState.REJECTED, "rejected with fedimod review"):
            raise FedimodError(f"action {action.id} was decided meanwhile; see `fedimod audit`")
        print(f"action {action.id} rejected: {request.action.undo_endpoint} sent for account {request.account_id}")
    return 0


# -- incident export ------------------------------------------------------------------------------

def _media_json(media: MediaRecord) -> dict[str, object]:
    """An attachment as the incident export names it: state and hashes, never bytes or URL."""
    return {"attachment_id": media.attachment_id, "media_type": media.media_type, "state": media.state.value,
            "error": media.error and scrub_urls(media.error),
            "hashes": {s.signal_type: REGISTRY[s.signal_type].format(s.value) for s in media.signals},
            f"{QUALITY_TYPE.name}_quality": quality_of(media.signals)}


async def _incident(config: Config, args: argparse.Namespace) -> int:
    from fedimod.store import open_store

    async with open_store(config.store) as store:
        post = await store.post_record(args.status_id)
        if post is None:
            raise FedimodError(f"status {args.status_id} is not in the store")
        audit = [r.as_dict() for r in await store.audit_rows(status_id=args.status_id)]
        actions = await store.actions(account_id=post.account_id)
        record = {
            "fedimod_incident": 1,
            "exported_at": datetime.now().astimezone().isoformat(timespec="seconds"),
            "instance": config.instance.base_url,
            "post": {"status_id": post.status_id, "url": post.url, "uri": post.uri, "created_at": post.created_at,
                     "first_seen_at": datetime.fromtimestamp(post.first_seen_at).astimezone().isoformat(),
                     "seen_via": post.source},
            "account": {"id": post.account_id, "acct": post.account_acct},
            "media": [_media_json(m) for m in await store.status_media(args.status_id)],
            "matched_entries": [m for row in audit if row["event"] == "decision" for m in row["detail"]["matches"]],
            "reports": [{"key": r.key, "state": r.state.value, "remote_report_id": r.remote_report_id,
                         "rule": r.rule, "created_at": r.created_at, "sent_at": r.sent_at,
                         "last_error": r.last_error and scrub_urls(r.last_error)}
                        for r in await store.reports(status_id=args.status_id)],
            "account_actions": [
                {"id": a.id, "action": a.request.action.value, "state": a.state.value, "rule": a.request.rule,
                 "status_id": a.request.status_id, "report_id": a.remote_report_id,
                 "provisional": a.request.provisional, "review": a.review_state and a.review_state.value}
                for a in actions],
            "audit": audit,
            "note": "Hashes and metadata only. fedimod never stores or forwards media, nor its address.",
        }
    _write(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n", args.output)
    return 0


# -- transparency report --------------------------------------------------------------------------

async def _report(config: Config, args: argparse.Namespace) -> int:
    from fedimod.ops.transparency import build_report, render_html, render_text
    from fedimod.store import open_store

    since = args.since if isinstance(args.since, float) else parse_since(args.since)
    async with open_store(config.store) as store:
        report = await build_report(store, since=since, until=time.time())
    renderers = {"text": render_text, "json": lambda r: r.as_json() + "\n", "html": render_html}
    _write(renderers[args.format](report), args.output)
    return 0
