"""Translation between the ``modelInput`` bodies users send and the canonical request.

Each dialect validates its body (pydantic, so errors name the field), builds a canonical request, and
renders a result back in its own shape, so a Claude-shaped record gets a Claude-shaped answer from
whatever model ran it.
"""
