"""The one exception type users see, so the CLI can print it as a single line."""

from __future__ import annotations


class HarnessError(Exception):
    """A problem with the user's input or environment, stated in one line.

    The CLI prints ``error: <message>`` and exits with status 2 (no traceback
    unless ``--debug``). Anything else escaping is a bug in the harness.
    """


class SlideError(HarnessError):
    """A slide could not be opened or read."""


class ConfigError(HarnessError, ValueError):
    """A configuration value is out of its accepted range."""
