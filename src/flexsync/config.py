"""Runtime configuration, read from FLEXSYNC_* environment variables and `.env`."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from cryptography.fernet import Fernet
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from flexsync.limits import MAX_WORKER_CONCURRENCY, MIN_WEBHOOK_EVENT_RETENTION_DAYS, RETENTION_REASON

# The most PostgreSQL connections one process opens from its pool, unless FLEXSYNC_DATABASE_MAX_CONNECTIONS says.
DEFAULT_DATABASE_MAX_CONNECTIONS = 40
# How long a SQLite write waits for another process's write lock, unless FLEXSYNC_SQLITE_BUSY_TIMEOUT_SECONDS says.
DEFAULT_SQLITE_BUSY_TIMEOUT_SECONDS = 15.0

# Database URL schemes -> the driver flexsync runs them with.
DRIVERS = {
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
}
DATABASE_URL_FORMS = "use postgresql+asyncpg://user:password@host/db or sqlite+aiosqlite:///path/to/file.db"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLEXSYNC_", env_file=".env", extra="ignore")

    database_url: str = "sqlite+aiosqlite:///./flexsync.db"
    encryption_keys: str = ""
    encryption_key_file: str = ".flexsync-key"
    stripe_api_base: str = "https://api.stripe.com"
    # Base URL shown in webhook URLs; when unset, derived from the address `serve` binds to.
    public_url: str | None = None
    # HTTPS served by flexsync itself, from a certificate (chain) and its private key, both PEM files: Stripe sends
    # live-mode events only to https:// endpoints. Unset: plain HTTP, for a TLS-terminating proxy in front.
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    # How long `serve` keeps an idle client connection open. Longer than the idle timeout of the usual load
    # balancers and proxies (60 s for AWS's, nginx's and others'), so that they, not flexsync, close an idle
    # connection: a server that closes first races the proxy's next request on it, which then fails (a 502).
    http_keep_alive_seconds: int = Field(75, ge=1, le=3600)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["console", "json"] = "console"

    job_lease_seconds: float = Field(30.0, ge=1)
    job_poll_interval: float = Field(1.0, gt=0)
    job_max_attempts: int = Field(12, ge=1)
    stripe_rate_limit_test: float = Field(25.0, gt=0, le=1000)
    stripe_rate_limit_live: float = Field(100.0, gt=0, le=1000)
    stripe_timeout_seconds: float = Field(20.0, gt=0)
    # How often each connection's customer events are listed from Stripe's Events API (webhooks/catch_up.py); 0: never.
    stripe_catchup_interval_seconds: float = Field(300.0, ge=0)
    # A Stripe request that failed for a reason worth another try (timeout, 429, 5xx) is tried again after this
    # long, then twice as long each time, up to 30 s.
    stripe_retry_first_seconds: float = Field(0.5, gt=0, le=30)
    # A stored Stripe webhook event that failed to apply is tried again after this long, then twice as long each
    # time, up to an hour; `serve` and `worker` look for events due every webhook_retry_sweep_seconds.
    webhook_retry_first_seconds: float = Field(2.0, gt=0, le=3600)
    webhook_retry_sweep_seconds: float = Field(2.0, gt=0, le=3600)
    # Whether `serve` runs the outbound worker inside the API process (`serve --no-worker` turns it off).
    run_worker: bool = True
    # Jobs one worker process runs at once (`flexsync worker --concurrency N` overrides it).
    worker_concurrency: int = Field(8, ge=1, le=MAX_WORKER_CONCURRENCY)
    # Days a stored webhook event that was applied or ignored is kept before workers prune it; 0 keeps them all.
    webhook_event_retention_days: int = 90
    # How long `serve` and `worker` keep trying, at start, a PostgreSQL that cannot be reached yet (starting up
    # beside them, restarting, failing over) before giving up; 0: give up at once.
    database_wait_seconds: float = Field(30.0, ge=0)
    # The most PostgreSQL connections one process opens from its pool (a worker also holds one for LISTEN).
    database_max_connections: int = Field(DEFAULT_DATABASE_MAX_CONNECTIONS, ge=2, le=1000)
    # Minutes without a page view after which a dashboard session ends (it ends 12 hours after sign-in anyway).
    dashboard_idle_minutes: int = Field(120, ge=1, le=12 * 60)
    # How often workers read the status of each managed Stripe webhook endpoint; 0 turns the check off.
    webhook_endpoint_check_seconds: float = Field(300.0, ge=0)
    # SQLite: how long a write waits for the write lock another process holds before it fails (an API request:
    # 503 with Retry-After, nothing changed).
    sqlite_busy_timeout_seconds: float = Field(DEFAULT_SQLITE_BUSY_TIMEOUT_SECONDS, gt=0, le=3600)

    @field_validator("database_url")
    @classmethod
    def _supported_database(cls, url: str) -> str:
        """A URL of one of the two supported drivers; `postgresql://` and `sqlite:///` get them filled in.
        Messages never repeat the URL (it may hold a password)."""
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise ValueError(f"not a database URL; {DATABASE_URL_FORMS}") from None
        driver = DRIVERS.get(parsed.drivername, parsed.drivername)
        if driver not in DRIVERS.values():
            raise ValueError(f"unsupported database; {DATABASE_URL_FORMS}")
        if driver == parsed.drivername:
            return url
        return parsed.set(drivername=driver).render_as_string(hide_password=False)

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_case(cls, level: object) -> object:
        return level.lower() if isinstance(level, str) else level

    @field_validator("encryption_keys")
    @classmethod
    def _fernet_keys(cls, keys: str) -> str:
        """Never repeats a key: the message names only the position of the first bad one."""
        for position, key in enumerate((k.strip() for k in keys.split(",") if k.strip()), start=1):
            try:
                Fernet(key.encode())
            except ValueError:
                raise ValueError(
                    f"key {position} is not a Fernet key (32 url-safe base64-encoded bytes, as "
                    "Fernet.generate_key() makes); give the keys newest first, separated by commas"
                ) from None
        return keys

    @field_validator("webhook_event_retention_days")
    @classmethod
    def _retention_outlasts_redelivery(cls, days: int) -> int:
        if days != 0 and days < MIN_WEBHOOK_EVENT_RETENTION_DAYS:
            raise ValueError(
                f"must be 0 (keep every event) or at least {MIN_WEBHOOK_EVENT_RETENTION_DAYS} days: {RETENTION_REASON}"
            )
        return days

    @model_validator(mode="after")
    def _tls_files_together(self) -> Settings:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError(
                "FLEXSYNC_TLS_CERT_FILE and FLEXSYNC_TLS_KEY_FILE go together: set both to serve HTTPS, or neither"
            )
        return self

    @property
    def serves_https(self) -> bool:
        return bool(self.tls_cert_file and self.tls_key_file)

    @property
    def base_url(self) -> str:
        scheme = "https" if self.serves_https else "http"
        return (self.public_url or f"{scheme}://{self.host}:{self.port}").rstrip("/")

    def webhook_url(self, tenant_id: str, environment_id: str) -> str:
        return f"{self.base_url}/v1/webhooks/stripe/{tenant_id}/{environment_id}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
