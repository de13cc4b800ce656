"""A Mastodon-compatible test instance, for the demo and the tests.

It is an independent implementation of Mastodon's wire behaviour, as Mastodon's source and Mastodon.py show it: it
imports
nothing from ingest, media, match or act (a test instance that shared the bot's parsing code would
prove nothing), and production code never imports it; only the `demo` and `sandbox` commands do.
"""

from fedimod.sandbox.server import Sandbox
from fedimod.sandbox.state import SandboxAccount, SandboxReport

__all__ = ["Sandbox", "SandboxAccount", "SandboxReport"]
