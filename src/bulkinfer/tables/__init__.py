"""``bulkinfer prepare``: Bedrock batch records built from a metadata table, images and a prompt template.

The table's rows are read as a stream (``source``), each row's columns fill a sandboxed Jinja2 prompt
template (``template``; ``sandbox`` and ``sizes`` bound what one row may cost in output, time and the
size of any value it builds), the row's images are found and checked (``images``), and the row becomes
one ``{"recordId", "modelInput"}`` record in the chosen dialect (``builder``). A row with a problem is
left out and reported by table, row and column (``report``); ``preparation`` runs the whole pass and
writes the output durably.
"""

DEFAULT_MAX_TOKENS = 512
"""Most tokens each answer may have, unless ``--max-tokens`` says otherwise (kept here, light to import,
for the CLI's option default)."""
