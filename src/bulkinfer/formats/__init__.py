"""Record line formats and the manifest: pure translation between bytes and domain values, no I/O."""
