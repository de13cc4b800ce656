"""Blocklist merge and diff benchmark, side by side with FediBlockHole 0.4.6 on the same lists.

Run on demand (not in CI):  python bench/blocklist_bench.py [--sources 10] [--domains 20000]

Ten sources of 20,000 domains each (Mastodon's import limit), as Mastodon CSV exports drawn from a
pool of 60,000 domains so that they overlap; an instance already holding 20,000 blocks, half of
them fedimod's. Timed: reading every source (fedimod's parser against FediBlockHole's), merging
at threshold 2 (against `merge_blocklists`), and diffing against the instance. Goal (issue 14):
parse + merge + diff < 5 s. Peak memory is printed (tracemalloc, in a second run outside the timing).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fedimod.blocklists.domains import Allowlist
from fedimod.blocklists.formats import parse
from fedimod.blocklists.merge import MergePlan, diff, merge
from fedimod.models import DomainBlock, ManagedBlock, Severity

HEADER = "#domain,#severity,#reject_media,#reject_reports,#public_comment,#obfuscate\n"
SEVERITIES = ("noop", "silence", "suspend")


def make_sources(count: int, domains: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    pool = [f"host{n}.example{n % 97}.net" for n in range(domains * 3)]
    return [HEADER + "".join(f"{d},{rng.choice(SEVERITIES)},{str(rng.random() < 0.3).lower()},false,"
                             f"reason {rng.randrange(20)},false\n" for d in rng.sample(pool, domains))
            for _ in range(count)]


def timed(fn):  # type: ignore[no-untyped-def]
    """(result, seconds, peak MB): timed on its own, then run again under tracemalloc for the memory
    (tracemalloc slows allocation several times over, so it never runs inside the timing)."""
    started = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - started
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return result, seconds, peak


def main(count: int, domains: int) -> None:
    texts = make_sources(count, domains)
    print(f"{count} sources of {domains:,} domains each ({sum(len(t) for t in texts) / 2**20:.1f} MB of CSV)")

    def fedimod_run() -> tuple[int, int]:
        lists = {f"s{i}": parse(t.encode(), "csv").blocks for i, t in enumerate(texts)}
        merged = merge(lists, {}, MergePlan(threshold=2), Allowlist([]))
        held = [DomainBlock(domain=d, severity=Severity.SILENCE, id=str(i))
                for i, d in enumerate(list(merged.blocks)[:domains])]
        managed = {b.domain: ManagedBlock(block=b, remote_id=b.id, sources=("s0",), updated_at=0.0)
                   for b in held[::2]}
        return len(merged.blocks), len(diff(merged.blocks, held, managed, allow_removals=True, allow_lowering=True))

    (merged, changes), ours, ours_mb = timed(fedimod_run)
    print(f"fedimod:       parse + merge + diff in {ours:5.2f} s (goal < 5 s), peak {ours_mb:6.1f} MB; "
          f"{merged:,} domains merged, {changes:,} changes against {domains:,} blocks")
    try:
        import fediblockhole
        from fediblockhole.blocklists import parse_blocklist
    except ImportError:
        print("FediBlockHole not installed (pip install fediblockhole==0.4.6): no baseline")
        return
    fields = ["domain", "severity", "reject_media", "reject_reports", "public_comment", "obfuscate"]

    def theirs() -> int:
        lists = [parse_blocklist(t, f"s{i}", format="mastodon_csv", import_fields=fields) for i, t in enumerate(texts)]
        return len(fediblockhole.merge_blocklists(lists, "max", threshold=2))

    their_merged, seconds, mb = timed(theirs)
    print(f"FediBlockHole: parse + merge        in {seconds:5.2f} s, peak {mb:6.1f} MB; {their_merged:,} domains "
          f"merged (no diff: it pushes every block): fedimod {seconds / ours:.2f}x its speed, diff included")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", type=int, default=10)
    parser.add_argument("--domains", type=int, default=20_000)
    args = parser.parse_args()
    main(args.sources, args.domains)
