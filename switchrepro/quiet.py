"""Holding back a library's log records for a moment, where switchrepro reports the matter itself."""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator


@contextlib.contextmanager
def silenced(logger: logging.Logger) -> Iterator[None]:
    """Raises `logger` to CRITICAL inside the block, then restores its level."""
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
