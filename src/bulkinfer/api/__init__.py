"""HTTP APIs: thin layers that turn wire requests into service calls."""
