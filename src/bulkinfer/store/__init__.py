"""Durable job state: SQLAlchemy over an embedded SQLite file (PostgreSQL later for several replicas)."""
