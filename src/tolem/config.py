"""Settings: every option is also an environment variable named ``TOLEM_<NAME>``.

The table in README.md is the user-facing list; keep the two in step (a test does).
"""

from __future__ import annotations

import ipaddress
import re
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: A velocity limit: ``ATTEMPTS/SECONDS``, or ``0`` (off).
_VELOCITY = re.compile(r"0|([1-9][0-9]{0,8})/([1-9][0-9]{0,6})")

_CSP_SOURCE = re.compile(
    r"'self'|'none'|\*|[a-z][a-z0-9+.-]*:|([a-z][a-z0-9+.-]*://)?[a-z0-9*.-]+(:([0-9]+|\*))?",
    re.IGNORECASE,
)


class Mode(StrEnum):
    SANDBOX = "sandbox"
    PRODUCTION = "production"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOLEM_", extra="ignore")

    mode: Mode = Field(Mode.SANDBOX, description="`sandbox` or `production`.")
    host: str = Field("127.0.0.1", description="Address `tolem serve` binds to.")
    port: int = Field(8000, ge=1, le=65535, description="Port `tolem serve` listens on.")
    workers: int = Field(1, ge=1, le=64, description="Worker processes of `tolem serve`.")
    data_dir: Path = Field(
        Path(".tolem"),
        description="Where the default SQLite database and the sandbox keys are kept.",
    )
    database_url: str = Field(
        "",
        description="SQLAlchemy URL; empty means SQLite at `<data_dir>/tolem.db`. "
        "PostgreSQL: `postgresql+psycopg://user@host/db`.",
    )
    public_base_url: str = Field(
        "",
        description="Public origin of this gateway (used in links it hands out); "
        "empty means `http://<host>:<port>`.",
    )
    rsa_key_bits: int = Field(
        2048,
        description="Size of the cryptogram RSA key generated in sandbox mode: "
        "2048, 3072 or 4096 (the live service uses 4096).",
    )
    rsa_private_key_file: Path | None = Field(
        None, description="PEM file of the cryptogram RSA private key (required in production)."
    )
    token_key: str = Field(
        "",
        description="Base64 of 32 random bytes that seal access tokens "
        "(required in production; sandbox generates one in data_dir).",
    )
    fingerprint_key: str = Field(
        "",
        description="Base64 of 32 random bytes keying card fingerprints "
        "(required in production; sandbox generates one in data_dir).",
    )
    card_key: str = Field(
        "",
        description="Base64 of exactly 32 random bytes: the key-encryption key of saved "
        "cards (required in production; sandbox generates one in data_dir).",
    )
    payform_frame_ancestors: str = Field(
        "*",
        description="Who may embed the hosted payment page in a frame (the widget): a "
        "Content-Security-Policy `frame-ancestors` source list, e.g. "
        "`https://shop.kz https://*.shop.kz`; `*` allows any site.",
    )
    acquirer: str = Field(
        "",
        description="Import path `module:factory` of the acquirer connector for non-test "
        "terminals; the factory is called with (settings, database). Required in production "
        "mode; sandbox mode sends every payment to the simulator.",
    )
    secure3d_timeout: int = Field(
        900,
        ge=1,
        le=86400,
        description="Seconds a payment waits for the 3-D Secure answer before it fails "
        "with reason 473.",
    )
    postlink_worker: bool = Field(
        True,
        description="Deliver postLinks from inside `tolem serve` (every worker process). "
        "Turn off when separate `tolem worker` processes deliver them.",
    )
    postlink_timeout: float = Field(
        10.0, ge=0.1, le=120, description="Seconds a postLink receiver has to answer."
    )
    postlink_retry_schedule: str = Field(
        "10,60,300,1800,7200,21600,86400",
        description="Seconds to wait after each failed postLink attempt, comma-separated; "
        "when they run out, the postLink is given up (8 attempts by default).",
    )
    postlink_poll_interval: float = Field(
        0.2, ge=0.01, le=60, description="Seconds a delivery worker waits when nothing is due."
    )
    postlink_concurrency: int = Field(
        16, ge=1, le=1000, description="postLinks one delivery worker sends at once."
    )
    token_ttl: int = Field(7200, ge=60, le=86400, description="Access token lifetime, seconds.")
    max_body_bytes: int = Field(65536, ge=1024, description="Largest request body accepted.")
    sqlite_synchronous: Literal["NORMAL", "FULL"] = Field(
        "NORMAL",
        description="SQLite `synchronous` pragma in WAL mode: NORMAL survives a process "
        "crash, FULL also a power cut.",
    )
    decrypt_thread: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Where a worker RSA-decrypts cryptograms: `on`, in a thread of its own "
        "beside the event loop (on another core); `off`, on the event loop; `auto`: `on` "
        "when the workers are fewer than the cores the process may use (its CPU "
        "affinity, or less under a container's CPU limit).",
    )
    log_level: str = Field("info", description="Log level: debug, info, warning, error.")
    access_log: bool = Field(True, description="Log one line per HTTP request.")
    forwarded_allow_ips: str = Field(
        "",
        description="Addresses of the TLS proxy in front (comma-separated IPs or networks, "
        "e.g. `127.0.0.1`): only requests from them have their `X-Forwarded-For` and "
        "`X-Forwarded-Proto` believed. Empty: those headers are ignored.",
    )
    rsa_previous_key_files: str = Field(
        "",
        description="PEM files of earlier cryptogram RSA private keys, comma-separated: "
        "cryptograms made with them still decrypt while shops move to the new "
        "`/public.rsa` (remove them when the grace period ends).",
    )
    card_previous_keys: str = Field(
        "",
        description="Earlier values of `TOLEM_CARD_KEY`, comma-separated: saved cards "
        "wrapped under them still open and are re-wrapped under the current key when "
        "used or by `tolem keys rewrap`.",
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        description="`text` (one line per record) or `json` (one JSON object per line, "
        "with the request id and, for access lines, method, path, status and duration).",
    )
    metrics_token: str = Field(
        "",
        description="Bearer token that /metrics requires; empty leaves /metrics open in "
        "sandbox mode and closed (403) in production mode.",
    )

    velocity_ip: str = Field(
        "",
        description="Card-testing defence: payment attempts one client address may make "
        "at one merchant per window, as `ATTEMPTS/SECONDS` (e.g. `20/600`); `0` turns it "
        "off; empty: off in sandbox mode, `20/600` in production. Past it, reason 491.",
    )
    velocity_terminal: str = Field(
        "",
        description="Payment attempts one terminal may take per window, as "
        "`ATTEMPTS/SECONDS`; `0` turns it off; empty: off in sandbox mode, `600/60` in "
        "production. Past it, reason 491.",
    )
    velocity_card: str = Field(
        "",
        description="Payment attempts one card (by its fingerprint) may make at one "
        "merchant per window, as `ATTEMPTS/SECONDS`; `0` turns it off; empty: off in "
        "sandbox mode, `5/600` in production. Past it, reason 491.",
    )

    @field_validator("rsa_key_bits")
    @classmethod
    def _key_bits(cls, value: int) -> int:
        if value not in (2048, 3072, 4096):
            raise ValueError("must be 2048, 3072 or 4096")
        return value

    @field_validator("payform_frame_ancestors")
    @classmethod
    def _sources(cls, value: str) -> str:
        # It is written into a header: a source list, nothing that could end the directive.
        sources = value.split()
        if not sources or not all(_CSP_SOURCE.fullmatch(source) for source in sources):
            raise ValueError("must be a space-separated list of sources such as https://shop.kz")
        return " ".join(sources)

    @field_validator("postlink_retry_schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        try:
            steps = [float(part) for part in value.split(",")]
        except ValueError:
            raise ValueError("must be seconds separated by commas, e.g. 10,60,300") from None
        if not all(0 <= step <= 7 * 86400 for step in steps):
            raise ValueError("each step must be 0 to 604800 seconds")
        return ",".join(f"{step:g}" for step in steps)

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _proxies(cls, value: str) -> str:
        proxies = [part.strip() for part in value.split(",") if part.strip()]
        for proxy in proxies:
            if proxy == "*":
                continue
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ValueError(
                    f"{proxy!r} is not an IP address or network (or *), e.g. 127.0.0.1"
                ) from None
        return ",".join(proxies)

    @field_validator("velocity_ip", "velocity_terminal", "velocity_card")
    @classmethod
    def _velocity(cls, value: str) -> str:
        value = value.strip()
        if value and not _VELOCITY.fullmatch(value):
            raise ValueError(
                "must be ATTEMPTS/SECONDS (e.g. 20/600, a window of at most 9999999 s) or 0 (off)"
            )
        return value

    @field_validator("log_level")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'tolem.db').resolve()}"

    @property
    def effective_public_base_url(self) -> str:
        if self.public_base_url:
            return self.public_base_url.rstrip("/")
        return f"http://{self.host}:{self.port}"

    @property
    def is_sandbox(self) -> bool:
        return self.mode is Mode.SANDBOX

    @property
    def rsa_previous_paths(self) -> list[Path]:
        return [
            Path(part.strip()) for part in self.rsa_previous_key_files.split(",") if part.strip()
        ]

    @property
    def card_previous_values(self) -> list[str]:
        return [part.strip() for part in self.card_previous_keys.split(",") if part.strip()]
