"""Runtime configuration, read from FLEXSYNC_* environment variables and `.env`."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Stripe redelivers an event for up to three days; a stored event kept at least this long is never pruned
# while a copy of it may still arrive (and be applied again).
MIN_WEBHOOK_EVENT_RETENTION_DAYS = 7
RETENTION_REASON = (
    "Stripe redelivers an event for up to three days, and a pruned event would be stored and applied again"
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLEXSYNC_", env_file=".env", extra="ignore")

    database_url: str = "sqlite+aiosqlite:///./flexsync.db"
    encryption_keys: str = ""
    encryption_key_file: str = ".flexsync-key"
    stripe_api_base: str = "https://api.stripe.com"
    # Base URL shown in webhook URLs; when unset, derived from the address `serve` binds to.
    public_url: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    log_level: str = "info"
    log_format: str = "console"

    job_lease_seconds: float = 30.0
    job_poll_interval: float = 1.0
    job_max_attempts: int = 12
    stripe_rate_limit_test: float = 25.0
    stripe_rate_limit_live: float = 100.0
    stripe_timeout_seconds: float = 20.0
    # Whether `serve` runs the outbound worker inside the API process (`serve --no-worker` turns it off).
    run_worker: bool = True
    # Jobs one worker process runs at once (`flexsync worker --concurrency N` overrides it).
    worker_concurrency: int = 8
    # Days a stored webhook event that was applied or ignored is kept before workers prune it; 0 keeps them all.
    webhook_event_retention_days: int = 90

    @field_validator("webhook_event_retention_days")
    @classmethod
    def _retention_outlasts_redelivery(cls, days: int) -> int:
        if days != 0 and days < MIN_WEBHOOK_EVENT_RETENTION_DAYS:
            raise ValueError(
                f"must be 0 (keep every event) or at least {MIN_WEBHOOK_EVENT_RETENTION_DAYS} days: {RETENTION_REASON}"
            )
        return days

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    def webhook_url(self, tenant_id: str, environment_id: str) -> str:
        return f"{self.base_url}/v1/webhooks/stripe/{tenant_id}/{environment_id}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
