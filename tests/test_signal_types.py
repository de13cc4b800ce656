"""Contract tests every registered signal type passes (a new type is one module plus its line in
`SIGNAL_TYPES`; these then check it), and the registry's seams: hashing, indexing and config
consult it rather than naming types."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from fedimod.cli.demo import altered_copy, generate_image, jpeg_bytes
from fedimod.config import parse_config
from fedimod.errors import ConfigError, HashParseError
from fedimod.match import BankIndex
from fedimod.media import hash_media
from fedimod.models import BankEntry, Category, Signal
from fedimod.signals import REGISTRY, SIGNAL_TYPES, Capability, IndexKind, SignalType, signal_type_named, types_with

TYPES = pytest.mark.parametrize("signal_type", SIGNAL_TYPES, ids=lambda t: t.name)


@TYPES
def test_examples_parse_and_format_back_to_themselves(signal_type: SignalType) -> None:
    assert signal_type.examples, "every type ships examples"
    for text in signal_type.examples:
        value = signal_type.parse(text)
        assert signal_type.format(value) == text.lower()
        assert signal_type.parse(f"  {text.upper()}\n") == value
    with pytest.raises(HashParseError):
        signal_type.parse(signal_type.examples[0] + "0")
    with pytest.raises(HashParseError):
        signal_type.format(1 << signal_type.bits)


@TYPES
def test_declarations_are_consistent(signal_type: SignalType) -> None:
    assert signal_type.bits % 4 == 0 and signal_type.bits > 0
    assert 0 <= signal_type.default_threshold <= signal_type.max_threshold
    if signal_type.index is IndexKind.EXACT:
        assert signal_type.default_threshold == 0 and not signal_type.is_perceptual
    if signal_type.reports_quality:
        assert signal_type.capability is Capability.FRAME


def _photo(seed: int) -> Image.Image:
    return Image.open(io.BytesIO(jpeg_bytes(generate_image(seed)))).convert("RGB")


@TYPES
def test_the_declared_capability_computes_the_signal(signal_type: SignalType) -> None:
    """Frame types: stable under a re-upload (resize + recompress), far from another picture.
    Byte types: equal for equal bytes, different when one byte changes. Each type refuses the
    capability it does not declare, so the media stage cannot call the wrong one."""
    if signal_type.capability is Capability.FRAME:
        original = _photo(1)
        signal = signal_type.hash_frame(original)
        assert signal.signal_type == signal_type.name and signal == signal_type.hash_frame(original)
        copy = Image.open(io.BytesIO(altered_copy(generate_image(1), 0.7))).convert("RGB")
        other = _photo(2)
        assert (signal.value ^ signal_type.hash_frame(copy).value).bit_count() <= signal_type.default_threshold
        assert (signal.value ^ signal_type.hash_frame(other).value).bit_count() > signal_type.default_threshold
        with pytest.raises(NotImplementedError):
            signal_type.digest(b"x")
    else:
        data = jpeg_bytes(generate_image(1))
        signal = signal_type.digest(data)
        assert signal.signal_type == signal_type.name and signal == signal_type.digest(bytes(data))
        assert signal_type.digest(data[:-1] + bytes([data[-1] ^ 1])) != signal
        with pytest.raises(NotImplementedError):
            signal_type.hash_frame(_photo(1))
    assert signal.value.bit_length() <= signal_type.bits


@TYPES
def test_hash_media_computes_exactly_the_requested_types(signal_type: SignalType) -> None:
    result = hash_media(jpeg_bytes(generate_image(3)), types=(signal_type.name,))
    assert [s.signal_type for s in result.signals] == [signal_type.name]


@TYPES
def test_the_index_matches_by_the_declared_kind(signal_type: SignalType) -> None:
    value = signal_type.parse(signal_type.examples[0])
    entry = BankEntry(id=1, bank="b", signal_type=signal_type.name, value=value, category=Category.OTHER)
    index = BankIndex([entry])
    one_bit_off = index.match([Signal(signal_type=signal_type.name, value=value ^ 1, quality=100)])
    assert bool(one_bit_off) is signal_type.is_perceptual
    exact = index.match([Signal(signal_type=signal_type.name, value=value, quality=100)])
    assert [(m.entry.id, m.distance) for m in exact] == [(1, 0)]


def test_config_takes_a_threshold_for_each_perceptual_type_and_bounds_it() -> None:
    perceptual = [t for t in SIGNAL_TYPES if t.is_perceptual]
    raw = {"instance": {"base_url": "https://m.example"},
           "banks": {f"{t.name}_threshold": t.max_threshold for t in perceptual}}
    config = parse_config(raw, {"FEDIMOD_TOKEN": "t"})
    assert all(config.banks.thresholds[t.name] == t.max_threshold for t in perceptual)
    for t in perceptual:
        with pytest.raises(ConfigError) as caught:
            parse_config({**raw, "banks": {f"{t.name}_threshold": t.max_threshold + 1}}, {"FEDIMOD_TOKEN": "t"})
        assert caught.value.path == f"banks.{t.name}_threshold"
    exact = next(t for t in SIGNAL_TYPES if not t.is_perceptual)
    with pytest.raises(ConfigError, match="unknown setting"):
        parse_config({**raw, "banks": {f"{exact.name}_threshold": 0}}, {"FEDIMOD_TOKEN": "t"})


@TYPES
def test_names_and_aliases_find_the_type_and_no_two_types_share_one(signal_type: SignalType) -> None:
    for name in (signal_type.name, *signal_type.aliases):
        assert signal_type_named(f" {name.upper()} ") is signal_type
    others = {n for t in SIGNAL_TYPES if t is not signal_type for n in (t.name, *t.aliases)}
    assert not {signal_type.name, *signal_type.aliases} & others


def test_types_with_splits_the_registry_by_capability_in_order() -> None:
    frames, digests = types_with(Capability.FRAME), types_with(Capability.BYTES)
    assert set(frames) | set(digests) == set(REGISTRY.values()) and not set(frames) & set(digests)
    assert list(frames) == [t for t in SIGNAL_TYPES if t in frames]
