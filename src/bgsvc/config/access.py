"""Settings of who may call, and whom the service calls: keys, limits, webhooks, TLS."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import AliasChoices, BaseModel, Field, SecretStr, field_validator, model_validator

from bgsvc.auth.addresses import parse_networks
from bgsvc.config.sections import ACCESS, EDGE, OUTBOUND, OptionalDir, in_section
from bgsvc.limits.base import RatePolicy
from bgsvc.outbound.policy import AllowList
from bgsvc.outbound.signing import decode_secret


class OutboundSettings(BaseModel):
    """Requests the service makes: webhooks and image URLs."""

    outbound_allow: str = Field(
        default="",
        description="Exceptions to the outbound address policy, comma-separated: host, "
        "host:port, IP, IP:port, [IPv6]:port or CIDR (e.g. 127.0.0.1:9000,hooks.internal). "
        "A name lets that name reach whatever it resolves to; an address or network lets any "
        "name reach it. Empty means public addresses only (docs/webhooks.md).",
        json_schema_extra=in_section(OUTBOUND),
    )

    @field_validator("outbound_allow")
    @classmethod
    def _valid_outbound_allow(cls, value: str) -> str:
        AllowList.parse(value)
        return value

    outbound_connect_timeout_s: float = Field(
        default=3.0,
        gt=0,
        description="Outbound requests: resolving the name, then connecting, each at most "
        "this long.",
        json_schema_extra=in_section(OUTBOUND),
    )
    outbound_read_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Outbound requests: longest wait for the next bytes of a response.",
        json_schema_extra=in_section(OUTBOUND),
    )
    outbound_total_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="Outbound requests: the whole exchange, redirects included (bounds a "
        "body dripped slower than the read timeout).",
        json_schema_extra=in_section(OUTBOUND),
    )
    webhook_secret: SecretStr = Field(
        default=SecretStr(""),
        description="Standard Webhooks signing key: whsec_ + base64 of at least 24 random "
        "bytes, checked at start (docs/webhooks.md shows how to make one). With "
        "auth=required each key signs with its own secret and this one only for keys made "
        "before per-key secrets (until rotated) and work submitted without a key; with auth "
        "off it signs everything, and empty means webhooks cannot be sent.",
        json_schema_extra=in_section(OUTBOUND),
    )

    @field_validator("webhook_secret")
    @classmethod
    def _valid_webhook_secret(cls, value: SecretStr) -> SecretStr:
        if value.get_secret_value():
            decode_secret(value.get_secret_value())
        return value

    webhook_attempts: int = Field(
        default=8,
        ge=1,
        le=30,
        description="Delivery attempts per webhook event; a 2xx, a 410 or an address the "
        "outbound policy refuses ends them.",
        json_schema_extra=in_section(OUTBOUND),
    )
    webhook_backoff_base_s: float = Field(
        default=15.0,
        ge=0,
        description="Wait after the first failed attempt is uniform in [0, base]; the bound "
        "doubles per attempt (full jitter).",
        json_schema_extra=in_section(OUTBOUND),
    )
    webhook_backoff_max_s: float = Field(
        default=300.0,
        ge=0,
        description="Longest wait between two webhook attempts; a receiver's Retry-After is "
        "honoured up to it.",
        json_schema_extra=in_section(OUTBOUND),
    )
    url_inputs: bool = Field(
        default=False,
        description="Fetch images given by URL (remove.bg image_url, rembg GET "
        "/api/remove?url=, image_url on /remove-background and /jobs) through the outbound "
        "guard; false: such requests get 400 invalid_parameter.",
        json_schema_extra=in_section(OUTBOUND),
    )


class AccessSettings(BaseModel):
    """Keys, rate limits, and who may read the metrics."""

    auth: Literal["off", "required"] = Field(
        default="off",
        description="required: every API route needs a key (X-Api-Key or Authorization: "
        "Bearer); off: no checks at all.",
        json_schema_extra=in_section(ACCESS),
    )
    auth_pepper: SecretStr = Field(
        default=SecretStr(""),
        description="Server-side key of the HMAC-SHA256 under which key secrets are stored "
        "(at least 16 characters, e.g. openssl rand -base64 32); the service refuses to "
        "start with auth=required without it, and `bgsvc keys` needs the same value. "
        "Changing it invalidates every key.",
        json_schema_extra=in_section(ACCESS),
    )
    trusted_proxies: str = Field(
        default="",
        description="Addresses or CIDRs of the proxies in front of the service (e.g. nginx's): "
        "from them, the client is the right-most X-Forwarded-For address not in this list, "
        "for uvicorn (every request's client address, under `bgsvc serve` and gunicorn, "
        "which ignore FORWARDED_ALLOW_IPS) and for the failed-authentication budget; "
        "empty: no proxy is trusted, the socket peer is the client.",
        json_schema_extra=in_section(ACCESS),
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _valid_trusted_proxies(cls, value: str) -> str:
        parse_networks(value)
        return value

    auth_fail_limit: str = Field(
        default="20/min",
        description="Failed authentications allowed per client address (N/s, N/min, N/hour, "
        "N/day; that many at once, then refilled evenly); beyond it, 429.",
        json_schema_extra=in_section(ACCESS),
    )

    @field_validator("auth_fail_limit")
    @classmethod
    def _valid_auth_fail_limit(cls, value: str) -> str:
        RatePolicy.parse(value)
        return value

    rate_limit_fail_open: bool = Field(
        default=True,
        description="When the limits store (Redis, or the node's SQLite file) fails: true "
        "admits the request (counted in bgsvc_limits_errors_total, one warning per 30 s); "
        "false refuses it with 503 limits_unavailable.",
        json_schema_extra=in_section(ACCESS),
    )
    metrics_max_keys: int = Field(
        default=50,
        ge=0,
        description="Distinct key names per process labelled in metrics; the rest are 'other'.",
        json_schema_extra=in_section(ACCESS),
    )
    metrics_token: SecretStr = Field(
        default=SecretStr(""),
        description="Bearer token GET /metrics requires (Authorization: Bearer <token>, at "
        "least 16 characters, e.g. openssl rand -hex 32; 401 without it); empty: /metrics is "
        "open, and with BGSVC_AUTH=required it leaves out the series labelled by key name.",
        json_schema_extra=in_section(ACCESS),
    )

    @field_validator("metrics_token")
    @classmethod
    def _long_metrics_token(cls, value: SecretStr) -> SecretStr:
        if 0 < len(value.get_secret_value()) < 16:
            raise ValueError("BGSVC_METRICS_TOKEN: at least 16 characters")
        return value

    prometheus_multiproc_dir: OptionalDir = Field(
        default=None,
        validation_alias=AliasChoices("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"),
        description="prometheus-client's multiprocess directory: needed under gunicorn with "
        "several workers (deploy/start.sh sets /tmp/bgsvc-metrics), else /metrics shows one "
        "worker's figures only.",
        json_schema_extra=in_section(ACCESS),
    )

    @model_validator(mode="after")
    def _pepper_when_required(self) -> Self:
        pepper = self.auth_pepper.get_secret_value()
        if pepper and len(pepper) < 16:
            raise ValueError("BGSVC_AUTH_PEPPER: at least 16 characters")
        if self.auth == "required" and not pepper:
            raise ValueError(
                "BGSVC_AUTH=required needs BGSVC_AUTH_PEPPER (e.g. openssl rand -base64 32)"
            )
        return self

    @property
    def forwarded_allow_ips(self) -> list[str]:
        """BGSVC_TRUSTED_PROXIES as uvicorn's and gunicorn's forwarded_allow_ips: networks
        in canonical form (gunicorn refuses host bits, as in 10.0.0.1/8)."""
        return [str(net) for net in parse_networks(self.trusted_proxies)]


class EdgeSettings(BaseModel):
    """TLS, the edge in front of the nodes, and browsers."""

    tls_cert: Path | None = Field(
        default=None,
        description="PEM certificate chain nginx serves for `bgsvc cluster up` (HTTPS on); "
        "unset with --tls: a throwaway CA and certificate for the run, in <run dir>/tls.",
        json_schema_extra=in_section(EDGE),
    )
    tls_key: Path | None = Field(
        default=None,
        description="PEM private key of BGSVC_TLS_CERT (both or neither).",
        json_schema_extra=in_section(EDGE),
    )
    edge_rate_per_s: int = Field(
        default=100,
        ge=0,
        description="nginx flood guard: requests per second one client address may "
        "sustain (`bgsvc cluster up`; the Compose file ships the same); beyond it nginx "
        "answers 429 itself. 0 turns the guard off.",
        json_schema_extra=in_section(EDGE),
    )
    edge_burst: int = Field(
        default=200,
        ge=0,
        description="nginx flood guard: requests above the rate let through at once before 429.",
        json_schema_extra=in_section(EDGE),
    )
    cors_origins: str = Field(
        default="",
        description="Origins (scheme://host[:port], comma-separated) whose pages may call "
        "the API from a browser (preflights are answered before authentication; no "
        "credentials mode); empty sends no CORS headers.",
        json_schema_extra=in_section(EDGE),
    )

    @model_validator(mode="after")
    def _tls_cert_with_key(self) -> Self:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("BGSVC_TLS_CERT and BGSVC_TLS_KEY go together")
        return self

    @property
    def cors_origin_list(self) -> list[str]:
        """BGSVC_CORS_ORIGINS as a list; empty means no CORS."""
        return [o.strip().rstrip("/") for o in self.cors_origins.split(",") if o.strip()]
