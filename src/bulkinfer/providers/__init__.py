"""Models behind one seam: infer a batch of canonical requests, one outcome per request."""
