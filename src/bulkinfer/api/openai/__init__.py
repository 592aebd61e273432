"""The OpenAI API on bulkinfer serve: Files, Batches and on-demand endpoints, under /v1."""
