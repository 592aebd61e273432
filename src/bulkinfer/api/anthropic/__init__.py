"""The Anthropic API (``/v1/messages...``), as the unmodified ``anthropic`` SDK calls it with ``base_url``."""
