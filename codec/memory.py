"""This process's memory, for long-run reports: current and peak resident set size in MB; and the
machine's available memory, for refusing input that would not fit.

Both come from /proc (Linux). Not `resource.getrusage(...).ru_maxrss` for the peak: Linux carries the
parent's peak over fork and exec into it, so a receiver or sender started by a 600 MB test or bench
process would report at least 600 MB. Where /proc is missing, ru_maxrss is the fallback for both.
"""

from __future__ import annotations

import os
import resource
import sys

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _ru_maxrss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, kB on Linux


def rss_mb() -> float:
    """Current resident set size in MB (/proc/self/statm); the peak where /proc is missing (shows growth, never a drop)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE / 2**20
    except (OSError, ValueError, IndexError):
        return _ru_maxrss_mb()


def peak_rss_mb() -> float:
    """This process's own peak resident set size in MB (VmHWM in /proc/self/status)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return _ru_maxrss_mb()


def available_mb() -> float | None:
    """Memory the machine can give without swapping, in MB (MemAvailable in /proc/meminfo); None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * _PAGE / 2**20
    except (ValueError, OSError, AttributeError):
        return None
