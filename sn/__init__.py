"""sn: a social network backend built for high load."""

from __future__ import annotations

__version__ = "0.1.0"
