"""The command line that starts a `vsae` process, for the tools that run sender and receiver as children
(`vsae demo`, `vsae bench load`)."""

from __future__ import annotations

import sys


def vsae_command(*args: str) -> list[str]:
    """argv for `vsae ARGS...` run by this interpreter (`python -m codec.cli ARGS...`), ready for `subprocess`.

    The child runs the same Python, the same installed packages and the same working tree as the caller,
    whether or not the `vsae` script is on PATH."""
    return [sys.executable, "-m", "codec.cli", *args]
