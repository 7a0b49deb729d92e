"""argparse value types shared by every `vsae` command line (codec, sender, receiver, bench).

Each is a callable for `add_argument(type=...)`: it returns the parsed value or raises
`argparse.ArgumentTypeError`, which argparse reports as a usage error naming the option.
"""

from __future__ import annotations

import argparse
from typing import Callable


def int_at_least(minimum: int, what: str) -> Callable[[str], int]:
    """An argparse type: an integer >= minimum; `what` describes it in the error ("a positive integer")."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


positive = int_at_least(1, "a positive integer")
non_negative = int_at_least(0, "an integer >= 0")


def positive_float(text: str) -> float:
    """An argparse type: a number > 0 (so not nan)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value
