"""The OpenAI API on `bulkinfer serve`: Files, Batches and inference, as the unmodified openai SDK calls
them (``base_url=<server>/v1``)."""
