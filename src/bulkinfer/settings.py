"""Server settings: built once from flags and ``BULKINFER_*`` variables, then passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from bulkinfer.logs import LogFormat, LogLevel
from bulkinfer.scheduler.quotas import Quotas
from bulkinfer.services.webhooks import Webhooks


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BULKINFER_", extra="ignore")

    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8080, ge=0, le=65535, description="Port to listen on (0 picks a free one).")
    data_dir: Path = Field(Path("bulkinfer-data"), description="State, job work files and local buckets.")
    database_url: str | None = Field(None, description="Job store URL; SQLite under the data dir by default.")
    s3_endpoint_url: str | None = Field(
        None, description="S3-protocol server; none maps s3:// to local buckets."
    )
    models: Path | None = Field(None, description="TOML catalog adding or overriding models.")
    insecure_dev: bool = Field(False, description="Accept any credentials (development only).")
    access_keys: str | None = Field(
        None, description="KEY:SECRET pairs, comma-separated: each key is a tenant; requests must be signed."
    )
    api_keys_env: str | None = Field(
        None,
        pattern=r"^[A-Z_][A-Z0-9_]*$",
        description="Environment variable holding API keys (comma-separated) for the openai and "
        "anthropic SDKs; with --access-keys, the same tenant.",
    )
    files_bucket: str = Field(
        "bulkinfer-files",
        pattern=r"^[a-z0-9][-.a-z0-9]{1,61}[a-z0-9]$",
        description="Bucket holding uploaded files and API batches' outputs, a folder per tenant.",
    )
    tenants: Path | None = Field(
        None, description="TOML file of tenants: their access keys, granted s3:// prefixes, models, limits."
    )
    watch_tenant: str | None = Field(
        None, description="The tenant whose grants and jobs the watch folder uses."
    )
    max_request_bytes: int = Field(32 * 2**20, ge=1024, description="Largest request body, refused unread.")
    max_buffered_bytes: int | None = Field(
        None, ge=1024, description="Request bodies held in memory at once, all requests together (2 bodies)."
    )
    docs: bool = Field(False, description="Serve /docs, /redoc and /openapi.json (unauthenticated).")
    region: str = Field("us-east-1", description="Region used in job ARNs when a request names none.")
    account_id: str = Field("123456789012", pattern=r"[0-9]{12}", description="Account id in job ARNs.")
    jobs_per_model: int = Field(3, ge=1, description="Jobs of one model that run at once; more wait.")
    min_records_per_job: int = Field(1, ge=0, description="Fewer records fail the job while Validating.")
    max_records_per_job: int = Field(50_000, ge=1, description="More records fail the job while Validating.")
    max_records_per_file: int = Field(50_000, ge=1, description="Most records in one input file.")
    max_file_bytes: int = Field(200 * 2**20, ge=1, description="Largest input file.")
    max_job_bytes: int = Field(2**30, ge=1, description="Most input bytes in one job.")
    lease_seconds: float = Field(10.0, gt=0, description="A replica that stops renewing loses its jobs.")
    outage_seconds: float = Field(
        6 * 3600.0, gt=0, description="How long a job waits out a database or S3 outage before it fails."
    )
    poll_seconds: float = Field(1.0, gt=0, description="Longest wait before looking at the store again.")
    fetch_allow: str | None = Field(
        None,
        description="Hosts or CIDRs (comma-separated) image URLs may point to though private or loopback.",
    )
    metrics_token_env: str | None = Field(
        None,
        pattern=r"^[A-Z_][A-Z0-9_]*$",
        description="Environment variable holding the bearer token /metrics needs (it shows every "
        "tenant's jobs); without one /metrics is refused, except under --insecure-dev.",
    )
    watch: str | None = Field(
        None,
        description="s3://bucket/prefix whose to-process/ .jsonl files become jobs (outputs: processed/).",
    )
    watch_model: str | None = Field(None, description="The model that jobs from the watch folder run on.")
    watch_every_s: float = Field(1.0, gt=0, description="How often the watch folder is looked at.")
    webhooks: list[str] = Field(
        default_factory=list, description="URLs told of every job's status changes (server-wide)."
    )
    webhook_secret_env: str | None = Field(
        None,
        pattern=r"^[A-Z_][A-Z0-9_]*$",
        description="Environment variable holding the webhook signing secret (whsec_<base64>); without "
        "one no webhook is sent.",
    )
    webhook_format: Literal["openai", "eventbridge"] = Field(
        "eventbridge", description="Payload style sent to the server-wide webhooks."
    )
    webhook_retry_base_s: float = Field(5.0, gt=0, description="Wait before a failed webhook's first retry.")
    executor: Literal["local", "ray"] = Field(
        "local", description="Where jobs' records run: in this process, or on a Ray cluster's actors."
    )
    ray_address: str | None = Field(None, description="The Ray cluster of executor ray (None: RAY_ADDRESS).")
    ray_actors: int | None = Field(None, ge=1, description="Actors a job gets on Ray (None: by the cluster).")
    log_level: LogLevel = Field("info", description="Least severe log lines written (stderr).")
    log_format: LogFormat = Field("text", description="Log lines as text, or one JSON object a line.")

    @property
    def quotas(self) -> Quotas:
        return Quotas(
            min_records_per_job=self.min_records_per_job,
            max_records_per_job=self.max_records_per_job,
            max_records_per_file=self.max_records_per_file,
            max_file_bytes=self.max_file_bytes,
            max_job_bytes=self.max_job_bytes,
        )

    def webhook_config(self) -> Webhooks | None:
        """The webhooks to send (None: none); a `ConfigError` for a URL without a secret, say."""
        allow = tuple(h.strip() for h in (self.fetch_allow or "").split(",") if h.strip())
        return Webhooks.of(
            self.webhooks,
            self.webhook_secret_env,
            self.webhook_format,
            region=self.region,
            account=self.account_id,
            fetch_allow=allow,
            retry_base_s=self.webhook_retry_base_s,
        )

    @property
    def store_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'bulkinfer.db'}"

    @property
    def engine_state_dir(self) -> Path:
        return self.data_dir / "engine"
