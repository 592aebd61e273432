"""Models behind an API: one adapter per provider's SDK, and the limits, retries and outage handling
every one of them shares (wrappers around the adapter, never inside it)."""
