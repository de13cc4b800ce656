"""fedimod: a hash-matching moderation sidecar for Mastodon-style instances."""

__version__ = "0.1.0"
