"""The one exception type users see, so the CLI can print it as a single line."""

from __future__ import annotations

from contextvars import ContextVar


class HarnessError(Exception):
    """A problem with the user's input or environment, stated in one line.

    The CLI prints ``error: <message>`` and exits with status 2 (no traceback
    unless ``--debug``). Anything else escaping is a bug in the harness.
    """


class SlideError(HarnessError):
    """A slide could not be opened or read."""


class ConfigError(HarnessError, ValueError):
    """A configuration value is out of its accepted range."""


_CLI_HINTS: ContextVar[bool] = ContextVar("wsi_harness_cli_hints", default=False)


def use_cli_hints(on: bool = True) -> None:
    """Phrase hints as command-line flags (``--resume``): the CLI turns this on, then off."""
    _CLI_HINTS.set(on)


def hint(option: str, value: object = True) -> str:
    """How a user sets ``option``: ``--resume`` on the command line, ``resume=True`` in Python."""
    if _CLI_HINTS.get():
        flag = "--" + option.replace("_", "-")
        return flag if value is True else f"{flag} {value}"
    return f"{option}={value!r}"
