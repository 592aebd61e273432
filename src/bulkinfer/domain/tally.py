"""Running totals that a process's parts add to and its metrics read."""

from __future__ import annotations


class MediaTally:
    """Images fetched and cache hits of every media resolver given it: a service's totals over all its
    jobs and on-demand calls (each resolver's own `MediaStats` ends with it)."""

    def __init__(self) -> None:
        self.fetches = 0
        """References read from their source: HTTP fetches, s3:// objects and files."""
        self.cache_hits = 0
        """Fetches and decodes saved: answers from a cache or from a load another record started."""

    def hit(self) -> None:
        self.cache_hits += 1
