"""Tables of the job-state store."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    false,
)

metadata = MetaData()

jobs = Table(
    "jobs",
    metadata,
    Column("job_id", String(64), primary_key=True),
    Column("model", String(200), nullable=False),
    Column("input_uri", Text, nullable=False),
    Column("output_uri", Text, nullable=False),
    Column("status", String(32), nullable=False),
    Column("message", Text),
    Column("options", Text, nullable=False, default="{}"),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float),
    Column("ended_at", Float),
    Column("total_records", Integer),
)

# One row per durable chunk of finished output lines of one input file.
chunks = Table(
    "chunks",
    metadata,
    Column("chunk_id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(64), nullable=False, index=True),
    Column("file_index", Integer, nullable=False),
    Column("path", Text, nullable=False),
    Column("lines", Text, nullable=False),
    Column("first_line", Integer, nullable=False),
    Column("records", Integer, nullable=False),
    Column("success", Integer, nullable=False),
    Column("errors", Integer, nullable=False),
    Column("input_tokens", BigInteger, nullable=False),
    Column("output_tokens", BigInteger, nullable=False),
    Column("error_codes", Text, nullable=False, default="{}"),
)

# Jobs submitted to the service (the Bedrock control plane); the engine's own rows live in `jobs`.
batch_jobs = Table(
    "batch_jobs",
    metadata,
    Column("job_id", String(64), primary_key=True),
    Column("tenant", String(128), nullable=False, index=True),
    Column("name", String(63), nullable=False),
    Column("model_id", String(2048), nullable=False),
    Column("client_token", String(256), nullable=True),
    Column("status", String(32), nullable=False, index=True),
    Column("message", Text),
    Column("submit_time", Float, nullable=False),
    Column("last_modified", Float, nullable=False),
    Column("start_time", Float),
    Column("end_time", Float),
    Column("request", Text, nullable=False),
    Column("owner", String(64)),
    Column("lease_until", Float),
    Column("expires_at", Float, index=True),
    Column("total", BigInteger),
    Column("processed", BigInteger),
    Column("success", BigInteger),
    Column("errors", BigInteger),
    # A job from before tenants, whose tenant is the access key id that made it (see rename_tenants).
    Column("keyed_by_access_key", Boolean, nullable=False, server_default=false()),
    Column("input_tokens", BigInteger),
    Column("output_tokens", BigInteger),
    # Which API made the job (bedrock, openai, anthropic): each lists and shows its own jobs.
    Column("api", String(16), nullable=False, server_default="bedrock"),
    # What an API keeps beside Bedrock's fields (JSON): an OpenAI batch's validation errors, say.
    Column("details", Text),
    # One job per token and tenant (NULL tokens are distinct): concurrent creates with one token make one.
    Index("uq_batch_jobs_tenant_token", "tenant", "client_token", unique=True),
    Index("ix_batch_jobs_tenant_api", "tenant", "api", "submit_time"),
)

# Every change of a service job, with its time and reason: the timeline the API, CLI and dashboard show.
# Written in the transaction that makes the change, so a change is never stored without its event.
job_events = Table(
    "job_events",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("job_id", String(64), nullable=False),
    Column("tenant", String(128), nullable=False),
    Column("at", Float, nullable=False),
    Column("name", String(32), nullable=False),
    Column("status", String(32), nullable=False),
    Column("reason", Text),
    Index("ix_job_events_job_seq", "job_id", "seq"),
)

# The webhook outbox: one row per request to send, written in the transaction of the job change it
# tells, so a change that committed is always told and one that did not never is.
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("webhook_id", String(64), nullable=False),
    Column("job_id", String(64), nullable=False),
    Column("tenant", String(128)),
    Column("url", Text, nullable=False),
    Column("guarded", Boolean, nullable=False),
    Column("payload", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", Float),
    Column("delivered_at", Float),
    Column("given_up", Boolean, nullable=False),
    Column("last_error", Text),
    Index("ix_webhook_deliveries_due", "next_attempt_at"),
    Index("ix_webhook_deliveries_job", "job_id"),
)

# Jobs this store's jobs run as on a provider's batch API (providers.batchapi), one row each, written
# before the provider job is created: a restart finds and follows it rather than create it again.
provider_jobs = Table(
    "provider_jobs",
    metadata,
    Column("token", String(64), primary_key=True),
    Column("job_id", String(64), nullable=False),
    Column("model", String(200), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("keys", Text, nullable=False),
    Column("state", String(16), nullable=False),
    Column("provider_id", Text),
    Column("provider_file", Text),
    Column("provider_status", String(32)),
    Column("total", Integer, nullable=False),
    Column("done", Integer, nullable=False),
    Column("failed", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
    Column("ended_at", Float),
    Column("message", Text),
    Column("cancelled", Boolean, nullable=False, server_default=false()),
    Index("ix_provider_jobs_job", "job_id", "seq"),
    Index("ix_provider_jobs_model_state", "model", "state"),
)

# Files uploaded through the OpenAI Files API (their bytes live in the files bucket, at ``uri``).
files = Table(
    "files",
    metadata,
    Column("file_id", String(64), primary_key=True),
    Column("tenant", String(128), nullable=False),
    Column("filename", Text, nullable=False),
    Column("purpose", String(32), nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, index=True),
    Column("uri", Text, nullable=False),
    Index("ix_files_tenant_created", "tenant", "created_at"),
)

# A token bucket per model and limit kind, shared by every process on this database (see rate_buckets.py).
rate_buckets = Table(
    "rate_buckets",
    metadata,
    Column("model", String(200), primary_key=True),
    Column("kind", String(16), primary_key=True),
    Column("level", Float, nullable=False),
    Column("stamp", Float, nullable=False),
)
