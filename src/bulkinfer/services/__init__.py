"""Use-cases shared by the HTTP APIs and the CLI; no HTTP types here."""
