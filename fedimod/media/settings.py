"""`[media]`: how media is downloaded and how much of it is decoded.

Numbers must be greater than 0 unless a field's metadata says otherwise (`min`, `max`); `config`
reads the TOML table against these fields, so each default is stated here and only here.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaSettings:
    max_bytes: int = 16 * 1024 * 1024
    # Mastodon accepts videos up to 99 MB; they are hashed from memory, never written to disk.
    max_video_bytes: int = 100 * 1024 * 1024
    # Frames hashed per animated image or video: the first and up to this many evenly spaced.
    max_frames: int = 5
    timeout_s: float = 30.0
    connect_timeout_s: float = 10.0
    max_redirects: int = field(default=3, metadata={"min": 0, "max": 10})
    max_pixels: int = 40_000_000
    # Pixels decoded across all frames of one item (each GIF/APNG frame is drawn on the full canvas).
    max_decoded_pixels: int = 400_000_000
    # Wall-clock limit for decoding and hashing one item; the worker is killed and replaced past it.
    hash_timeout_s: float = 20.0
    # Also match each picture's rotations and mirror images, its trim and its centre (`frame_signals`):
    # bench/robustness_bench.py measures what it catches and costs (docs/detection.md).
    variants: bool = True
    # Hosts fetched even when they resolve to private addresses (a test instance on loopback).
    allow_hosts: tuple[str, ...] = ()
