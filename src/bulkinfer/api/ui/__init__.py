"""The web dashboard at ``/ui``: server-rendered pages that poll small JSON endpoints for live figures."""
