"""The Anthropic API on bulkinfer serve: Message Batches and Messages, under /v1/messages."""
