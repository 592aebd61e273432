"""Where input and output live. Local paths for now; every other layer goes through this package."""
