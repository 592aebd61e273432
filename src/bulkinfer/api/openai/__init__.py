"""The OpenAI API (``/v1/...``), as the unmodified ``openai`` SDK calls it with ``base_url``."""
