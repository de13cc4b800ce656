"""Parity with FediBlockHole 0.4.6 (the tool fedimod replaces): the same inputs and merge settings
give the same merged list, except where docs/blocklists.md says fedimod does better, each of
which is shown here: spellings of one domain are one domain, obfuscated entries resolve through
their digest, and a malformed row is reported instead of aborting the run."""

from __future__ import annotations

import random

import pytest

from fedimod.blocklists.domains import Allowlist, digest
from fedimod.blocklists.formats import parse
from fedimod.blocklists.merge import MergePlan, merge

fediblockhole = pytest.importorskip("fediblockhole", reason="the parity test needs fediblockhole (pip install "
                                                            "'.[test]')")
from fediblockhole.blocklists import parse_blocklist  # noqa: E402

FIELDS = ["domain", "severity", "reject_media", "reject_reports", "public_comment", "obfuscate"]
HEADER = "#domain,#severity,#reject_media,#reject_reports,#public_comment,#obfuscate\n"
SEVERITIES = ("noop", "silence", "suspend")


def sources(seed: int, count: int = 3, domains: int = 300) -> list[str]:
    """Mastodon CSV exports of overlapping lists, in clean spelling (what both tools agree on)."""
    rng = random.Random(seed)
    pool = [f"site{n}.example" for n in range(domains)]
    out = []
    for _ in range(count):
        rows = [f"{d},{rng.choice(SEVERITIES)},{str(rng.random() < 0.3).lower()},{str(rng.random() < 0.2).lower()},"
                f"comment {rng.randrange(5)},false" for d in rng.sample(pool, domains // 2)]
        out.append(HEADER + "\n".join(rows) + "\n")
    return out


def theirs(texts: list[str], mode: str, threshold: int, kind: str = "count") -> dict[str, tuple[str, bool, bool]]:
    lists = [parse_blocklist(t, f"s{i}", format="mastodon_csv", import_fields=FIELDS) for i, t in enumerate(texts)]
    merged = fediblockhole.merge_blocklists(lists, mode, threshold=threshold, threshold_type=kind)
    return {d: (str(b.severity), b.reject_media, b.reject_reports) for d, b in merged.items()}


def ours(texts: list[str], mode: str, threshold: float, percent: bool = False, known: tuple[str, ...] = ()
         ) -> dict[str, tuple[str, bool, bool]]:
    lists = {f"s{i}": parse(t.encode(), "csv").blocks for i, t in enumerate(texts)}
    merged = merge(lists, {}, MergePlan(mode=mode, threshold=threshold, percent=percent), Allowlist([]), known=known)
    return {d: (m.block.severity.value, m.block.reject_media, m.block.reject_reports)
            for d, m in merged.blocks.items()}


@pytest.mark.parametrize(("mode", "threshold"), [("max", 1), ("max", 2), ("min", 2), ("max", 3), ("min", 1)])
def test_on_clean_inputs_both_tools_merge_to_the_same_list(mode: str, threshold: int) -> None:
    texts = sources(seed=threshold * 10 + len(mode))
    expected = theirs(texts, mode, threshold)
    assert expected  # the inputs overlap enough for every setting
    assert ours(texts, mode, threshold) == expected


def test_a_percentage_threshold_agrees_too() -> None:
    texts = sources(seed=5, count=4)
    assert ours(texts, "max", 50, percent=True) == theirs(texts, "max", 50, kind="pct")


def test_improvement_spellings_of_one_domain_are_one_domain() -> None:
    texts = [HEADER + "Example.COM.,suspend,false,false,,false\n", HEADER + "example.com,suspend,false,false,,false\n"]
    assert theirs(texts, "max", 2) == {}  # FediBlockHole sees two domains, each listed once
    assert ours(texts, "max", 2) == {"example.com": ("suspend", False, False)}


def test_improvement_obfuscated_entries_resolve_through_their_digest() -> None:
    hidden = f'[{{"domain": "sec***.example", "digest": "{digest("secret.example")}", "severity": "suspend"}}]'
    clear = HEADER + "secret.example,suspend,false,false,,false\n"
    fbh = [parse_blocklist(hidden, "a", format="mastodon_api_public", import_fields=FIELDS),
           parse_blocklist(clear, "b", format="mastodon_csv", import_fields=FIELDS)]
    assert dict(fediblockhole.merge_blocklists(fbh, "max", threshold=2).items()) == {}  # skipped: "obfuscated"
    lists = {"a": parse(hidden.encode(), "json").blocks, "b": parse(clear.encode(), "csv").blocks}
    assert list(merge(lists, {}, MergePlan(threshold=2), Allowlist([])).blocks) == ["secret.example"]


def test_improvement_a_malformed_row_is_reported_not_fatal() -> None:
    text = HEADER + "fine.example,suspend,false,false,,false\nbad.example,sometimes,false,false,,false\n"
    with pytest.raises(ValueError, match="Invalid severity"):  # FediBlockHole's whole run stops here
        parse_blocklist(text, "a", format="mastodon_csv", import_fields=FIELDS)
    parsed = parse(text.encode(), "csv")
    assert [b.domain for b in parsed.blocks] == ["fine.example"] and [e.where for e in parsed.errors] == ["line 3"]
