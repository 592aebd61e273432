"""Runs one job: stream records, dispatch micro-batches under limits, commit chunks, finalize outputs."""
