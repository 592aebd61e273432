"""Durable job state: SQLAlchemy over an embedded SQLite file, or PostgreSQL for several replicas."""
