"""HiGHS instances without the banner.

HiGHS prints a banner to the C-level stdout when the first ``highspy.Highs`` of a process is
created, before any option can switch output off; it would end up in the middle of a command's
output (``advex certify --vnnlib`` prints one word). ``new_highs`` creates that first instance
with file descriptor 1 pointed at /dev/null; every certifier creates its instances through it.
"""

from __future__ import annotations

import os
import sys
from typing import Any

__all__ = ["new_highs", "silence_banner"]

_started = False


def new_highs() -> Any:
    """A ``highspy.Highs``. HiGHS prints its banner to the C-level stdout when the first
    instance of a process is created, before any option can switch output off; that one is
    created with file descriptor 1 pointed at /dev/null."""
    import highspy

    global _started
    if _started:
        return highspy.Highs()
    _started = True
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no file descriptor 1 (an embedded interpreter): let it print
        return highspy.Highs()
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            return highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def silence_banner() -> None:
    """Create the process's first HiGHS instance (banner muted) if none was created yet, so
    that later ones, including other modules', print nothing."""
    if not _started:
        new_highs().clear()
