"""Pure domain types: canonical requests and results, record errors, job counts. No I/O here."""
