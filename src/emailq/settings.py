"""Every setting of emailq, in one typed tree, and where each value came from.

Sources, each overriding the one before: the defaults here → an optional TOML file
(``--config`` or ``EMAILQ_CONFIG``) → ``EMAILQ_*`` environment variables → command-line
flags. A setting ``section.name`` is ``name`` under ``[section]`` in the file and
``EMAILQ_SECTION_NAME`` in the environment (``EMAILQ_BROKER_URL``, ``EMAILQ_WORKER_LEASE_S``);
top-level settings are ``EMAILQ_NAME``. The Resend key may also come from ``RESEND_API_KEY``,
the name Resend's own tools use.

This is the only module that reads the environment: everything else is handed a
:class:`Settings` (usually through a :class:`emailq.deployment.Deployment`).
pydantic-settings reads the environment and the file; the layering is ours, so that
``emailq config`` can say which source each value came from.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic import ValidationError as PydanticValidationError
from pydantic.fields import FieldInfo

from emailq.autoscale.pattern import (
    DEFAULT_PATTERN,
    DEFAULT_PROTECTED,
    DEFAULT_SEASON,
    ProtectedHours,
    Season,
    WeeklyPattern,
    zone,
)
from emailq.errors import ConfigurationError
from emailq.logs import REDACTED

if TYPE_CHECKING:
    from pydantic_settings import BaseSettings

ENV_PREFIX = "EMAILQ_"
CONFIG_ENV = "EMAILQ_CONFIG"
RESEND_KEY_ENV = "RESEND_API_KEY"  # the name Resend's own SDKs read
DEFAULT_BROKER_URL = "sqlite:///emailq.db"
PROVIDER_SCHEMES = ("smtp", "smtps", "resend", "resend+http", "file")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BrokerSettings(_Section):
    url: str = Field(
        DEFAULT_BROKER_URL,
        description="the queue: sqlite:///path.db (embedded) or redis://host:port/db,"
        " rediss://…, redis+sentinel://h:p[,h:p]/service (?prefix=name per queue)",
    )
    retention_s: float = Field(
        30 * 24 * 3600.0,
        gt=0,
        description="seconds the records of sent, dead and cancelled mail are kept (no bodies)",
    )
    retain_sent_bodies: bool = Field(
        False,
        description="keep a sent email's body and recipients until its record is purged"
        " (default: dropped when it is sent)",
    )
    idempotency_ttl_s: float = Field(
        24 * 3600.0, gt=0, description="seconds an idempotency key returns its first id"
    )
    # How long each lane's mail is retried before it is buried (an MTA's queue lifetime).
    max_age_critical_s: float = Field(
        86400.0, gt=0, description="seconds critical mail is retried before it is buried"
    )
    max_age_wedding_day_s: float = Field(
        2 * 86400.0, gt=0, description="seconds wedding_day mail is retried before it is buried"
    )
    max_age_pre_wedding_s: float = Field(
        5 * 86400.0, gt=0, description="seconds pre_wedding mail is retried before it is buried"
    )
    max_age_standard_s: float = Field(
        5 * 86400.0, gt=0, description="seconds standard mail is retried before it is buried"
    )
    max_age_bulk_s: float = Field(
        5 * 86400.0, gt=0, description="seconds bulk mail is retried before it is buried"
    )


class PrivacySection(_Section):
    audit: bool = Field(True, description="write the audit trail (events per message)")
    audit_retention_s: float = Field(
        90 * 24 * 3600.0, gt=0, description="seconds audit events are kept after acceptance"
    )
    # A week: long enough to requeue what an outage or a bad credential killed, then gone.
    dead_body_retention_s: float = Field(
        7 * 86400.0,
        ge=0,
        description="seconds a dead email keeps its body (for `emailq requeue --dead`); 0:"
        " dropped when it dies",
    )
    hash_secret: SecretStr | None = Field(
        None,
        description="the HMAC secret that stands an address's hash in for it (erasure index,"
        " audit trail); set it, and keep it: a new one loses the index",
    )


class WebhookSection(_Section):
    allow_private_urls: bool = Field(
        False,
        description="let webhook URLs reach loopback, private and link-local addresses (tests,"
        " a receiver on the same host); off, they are refused (SSRF)",
    )
    concurrency: int = Field(
        16, ge=1, le=512, description="webhook requests in flight per `emailq webhooks` process"
    )
    timeout_s: float = Field(10.0, gt=0, description="seconds a receiver has to answer")
    max_age_s: float = Field(
        86400.0, gt=0, description="seconds a webhook delivery is retried before it is failed"
    )
    retry_base_s: float = Field(
        5.0, gt=0, description="first webhook retry delay, doubling after, at most an hour"
    )
    poll_s: float = Field(
        0.5, gt=0, description="seconds between reads of new audit events and due deliveries"
    )


class ProviderSettings(_Section):
    url: str = Field(
        "smtp://127.0.0.1:25",
        description="where mail goes: smtp://[user:pw@]host[:port][?pool=N&starttls=auto],"
        " smtps://…, resend://, file:///dir; several, comma-separated, make a failover chain"
        " (primary first)",
    )
    resend_api_key: SecretStr | None = Field(
        None, description=f"the Resend API key (also read from {RESEND_KEY_ENV})"
    )
    check_interval_s: float = Field(
        30.0, gt=0, description="seconds between health checks of a chain's providers"
    )
    fail_after_checks: int = Field(
        3, ge=1, description="failed health checks in a row that take a provider out of the chain"
    )
    failback_s: float = Field(
        300.0, ge=0, description="seconds a provider must pass its checks before it is used again"
    )
    failback_ramp_s: float = Field(
        0.0,
        ge=0,
        description="seconds over which a provider back in the chain takes a growing share of"
        " the traffic (0: all at once)",
    )
    breaker_failures: int = Field(
        5,
        ge=1,
        description="transient send failures within breaker_window_s that fail over at once",
    )
    breaker_window_s: float = Field(
        10.0, gt=0, description="seconds the circuit breaker counts failures over"
    )
    check_timeout_s: float = Field(
        10.0, gt=0, description="seconds a health check may take before it counts as failed"
    )
    unsure_retries: int = Field(
        1,
        ge=0,
        description="times a chain sends again through the same provider a message it may"
        " have taken (a timeout after DATA) before the message may move to another",
    )

    @field_validator("url")
    @classmethod
    def _chain_entries(cls, value: str) -> str:
        for position, entry in enumerate(value.split(","), 1):
            scheme = entry.strip().partition("://")[0]
            if not entry.strip():
                raise ValueError(f"entry {position} of the provider chain is empty")
            if scheme not in PROVIDER_SCHEMES:
                raise ValueError(
                    f"entry {position}: unknown provider URL scheme {scheme!r}"
                    f" (use {', '.join(s + '://' for s in PROVIDER_SCHEMES)})"
                )
        return value

    @property
    def urls(self) -> list[str]:
        """The chain, primary first (one entry: a single provider)."""
        return [entry.strip() for entry in self.url.split(",")]


class WorkerSection(_Section):
    processes: int | None = Field(
        None, ge=1, description="worker processes (default: 1 for `worker`, 2 for `run`)"
    )
    batch_size: int = Field(100, ge=1, le=1000, description="messages per lease")
    concurrency: int = Field(2, ge=1, le=64, description="batches in flight per process")
    lease_s: float = Field(30.0, gt=0, description="seconds a lease lasts between heartbeats")
    retry_base_s: float = Field(10.0, gt=0, description="first retry delay, doubling after")
    shutdown_timeout_s: float = Field(
        20.0, ge=0, description="seconds in-flight batches get after SIGTERM"
    )
    metrics_port: int = Field(
        0, ge=0, le=65535, description="Prometheus port of the first worker (+1 each); 0: none"
    )


class LimitSettings(_Section):
    provider_rate: float | None = Field(None, gt=0, description="messages/s through the provider")
    domain_rate: float | None = Field(None, gt=0, description="messages/s per recipient domain")
    tenant_rate: float | None = Field(None, gt=0, description="messages/s delivered per tenant")
    critical_reserve: float = Field(
        0.2, ge=0, lt=1, description="share of each limit's burst only critical mail may spend"
    )


class ApiSection(_Section):
    host: str = Field("127.0.0.1", description="address `emailq serve` listens on")
    port: int = Field(8025, ge=0, le=65535, description="port `emailq serve` listens on")
    workers: int = Field(1, ge=1, le=64, description="API server processes")
    broker_patience_s: float = Field(
        3.0, gt=0, le=300,
        description="how long a request waits for an unreachable Redis before answering 503",
    )  # fmt: skip
    # 10 MB as Postfix counts it: a body over it is 413 before any of it is parsed, so the
    # model's own 10 MiB message limit (422) is never the first to see an oversized body.
    max_body_bytes: int = Field(
        10_000_000, ge=1024, description="request bodies larger than this get 413"
    )
    tenant_rate: float | None = Field(
        None, gt=0, description="emails/s each tenant may submit (429 beyond); none: no limit"
    )
    tenant_burst: float | None = Field(
        None, gt=0, description="emails a tenant may submit at once (default: 2 s of its rate)"
    )

    tenant_rates: dict[str, Annotated[float, Field(gt=0)]] = Field(
        default={},
        description="tenant → its own intake emails/s, instead of api.tenant_rate (a TOML"
        ' table, or JSON in the environment: {"acme": 50})',
    )

    def burst_for(self, rate: float) -> float:
        """A flood is answered 429 within about 2 s, yet a guest list of a few seconds'
        worth still passes whole."""
        if self.tenant_burst is not None:
            return self.tenant_burst
        return max(1.0, 2.0 * rate)

    @property
    def intake_burst(self) -> float:
        return self.burst_for(self.tenant_rate or 0.0)

    from_domains: dict[str, frozenset[str]] = Field(
        default={},
        description="tenant → the only domains its From addresses may use (a TOML table, or"
        ' JSON in the environment: {"acme": ["weddings.example"]}); tenants not named: any',
    )

    @field_validator("from_domains")
    @classmethod
    def _lowercase_domains(cls, value: dict[str, frozenset[str]]) -> dict[str, frozenset[str]]:
        return {tenant: frozenset(d.lower() for d in domains) for tenant, domains in value.items()}

    metrics_access: Literal["auto", "open", "operator"] = Field(
        "auto",
        description="who may read /metrics: open, operator (an operator API key), or auto:"
        " open when the API listens on loopback only, operator otherwise",
    )

    @property
    def metrics_need_key(self) -> bool:
        if self.metrics_access == "auto":
            return not _loopback(self.host)
        return self.metrics_access == "operator"

    ready_timeout_s: float = Field(2.0, gt=0, description="/health/ready answers within this")
    check_provider: bool = Field(
        False, description="/health/ready also checks that the provider answers"
    )
    url: str | None = Field(
        None, description="a running API, for `emailq send` and `emailq loadtest --target`"
    )
    key: SecretStr | None = Field(None, description="the API key used with api.url")


class AutoscaleSection(_Section):
    enabled: bool = Field(
        False, description="`emailq run` sizes its pool itself (`--autoscale MIN:MAX` turns it on)"
    )
    min_workers: int = Field(2, ge=1, le=1000, description="the fewest worker processes")
    max_workers: int = Field(20, ge=1, le=1000, description="the most worker processes")
    interval_s: float = Field(15.0, gt=0, description="seconds between decisions")
    emergency_queued: int = Field(
        5000, ge=1, description="queued emails from which the pool goes to the maximum at once"
    )
    # Each lane's deadline: the autoscaler sizes the pool to clear the lane within it.
    deadline_critical_s: float = Field(30.0, gt=0, description="critical mail's deadline (s)")
    deadline_wedding_day_s: float = Field(
        120.0, gt=0, description="wedding_day mail's deadline (s)"
    )
    deadline_pre_wedding_s: float = Field(
        600.0, gt=0, description="pre_wedding mail's deadline (s)"
    )
    deadline_standard_s: float = Field(900.0, gt=0, description="standard mail's deadline (s)")
    deadline_bulk_s: float = Field(3600.0, gt=0, description="bulk mail's deadline (s)")
    up_cooldown_s: float = Field(
        30.0, ge=0, description="seconds after a change before the pool grows again"
    )
    down_after_s: float = Field(
        300.0, ge=0, description="seconds of lower demand before the pool shrinks a step"
    )
    down_cooldown_s: float = Field(
        600.0, ge=0, description="seconds after a change before the pool shrinks"
    )
    down_step: int = Field(1, ge=1, description="workers stopped per step down")
    headroom: float = Field(
        0.5, ge=0, description="workers above the need, as a share (0.5: ±20 % load fits)"
    )
    worker_rate: float = Field(
        400.0, gt=0, description="emails/s one worker delivers, until the autoscaler measures it"
    )
    lookahead_s: float = Field(
        900.0, ge=0, description="scheduled mail due within this counts as already queued"
    )
    ceremony_margin_s: float = Field(
        600.0, ge=0, description="wedding mail should be out this long before its ceremony"
    )
    ceremony_horizon_s: float = Field(
        21600.0, ge=0, description="ceremonies of queued wedding mail this far ahead are read"
    )
    ceremony_hold_s: float = Field(
        1800.0, ge=0, description="the pool does not shrink this close to a ceremony with mail"
    )
    pattern: str = Field(
        DEFAULT_PATTERN,
        description="weekly traffic multipliers, `day HH:MM=x`, comma-separated; each holds"
        " until the day's next point (other times ×1)",
    )
    season: str = Field(
        DEFAULT_SEASON, description="wedding-season months and multiplier, `first-last=x`"
    )
    protected: str = Field(
        DEFAULT_PROTECTED,
        description="hours the pool never shrinks in, `day HH:MM-HH:MM`, comma-separated",
    )
    timezone: str = Field("UTC", description="the time zone of the pattern and protected hours")
    metrics_port: int = Field(
        0, ge=0, le=65535, description="Prometheus port of `emailq run`'s autoscaler; 0: none"
    )

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        WeeklyPattern.parse(value)
        return value

    @field_validator("season")
    @classmethod
    def _season(cls, value: str) -> str:
        Season.parse(value)
        return value

    @field_validator("protected")
    @classmethod
    def _protected(cls, value: str) -> str:
        ProtectedHours.parse(value)
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        zone(value)
        return value

    @model_validator(mode="after")
    def _bounds(self) -> AutoscaleSection:
        if self.min_workers > self.max_workers:
            raise ValueError(
                f"autoscale.min_workers ({self.min_workers}) is above"
                f" autoscale.max_workers ({self.max_workers})"
            )
        return self


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


class MonitorSection(_Section):
    enabled: bool = Field(
        True,
        description="`emailq run` and `emailq serve` also run the monitor (one writer per queue)",
    )
    interval_s: float = Field(
        15.0, ge=0.1, description="seconds between history snapshots and alert evaluations"
    )
    publish_s: float = Field(
        5.0, ge=0, description="seconds between a worker's samples to the broker; 0: none"
    )
    retention_s: float = Field(
        86400.0, gt=0, description="seconds of monitor history kept in the broker"
    )
    rules_file: Path | None = Field(
        None, description="TOML alert rules, merged over the defaults by name"
    )
    slack_url: SecretStr | None = Field(None, description="Slack incoming webhook for alerts")
    webhook_url: str | None = Field(None, description="JSON webhook for alerts (HMAC-signed)")
    webhook_secret: SecretStr | None = Field(
        None, description="HMAC-SHA256 key signing the webhook's body and timestamp"
    )
    email_to: str | None = Field(None, description="operator address alert emails go to")
    email_from: str = Field("emailq-monitor@localhost", description="sender of alert emails")
    email_smtp_url: str | None = Field(
        None, description="SMTP server for alert emails, smtp://host:port (never the queue)"
    )


class Settings(BaseModel):
    """The effective settings. Build with :meth:`load` (all sources) or directly (defaults
    and the arguments given: nothing is read from the environment).

    A plain model: pydantic-settings reads the file and the environment in :meth:`load`
    only, so a worker process handed its settings (:meth:`from_handoff`) never imports it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    domain: str = Field(
        "emailq.local",
        pattern=r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$",
        description="right-hand side of the Message-IDs workers generate",
    )
    policy_file: Path | None = Field(None, description="TOML that overrides the lane policy")
    encryption_keys: SecretStr | None = Field(
        None,
        description="seal payloads at rest (AES-256-GCM): id:base64key[,id:base64key], the"
        " first seals, the rest still open (rotation: `emailq rotate-keys`)",
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="log lines as text, or as JSON objects (one per line)"
    )

    @field_validator("encryption_keys")
    @classmethod
    def _keys_parse(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            from emailq.privacy.sealing import parse_keys

            parse_keys(value.get_secret_value())
        return value

    broker: BrokerSettings = BrokerSettings()
    provider: ProviderSettings = ProviderSettings()
    worker: WorkerSection = WorkerSection()
    limits: LimitSettings = LimitSettings()
    api: ApiSection = ApiSection()
    autoscale: AutoscaleSection = AutoscaleSection()
    privacy: PrivacySection = PrivacySection()
    webhooks: WebhookSection = WebhookSection()
    monitor: MonitorSection = MonitorSection()

    _origins: dict[str, str] = PrivateAttr(default_factory=dict)

    @classmethod
    def load(
        cls,
        config_file: str | Path | None = None,
        flags: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Settings:
        """Defaults → TOML file → environment → ``flags`` (a nested dict, as the file's)."""
        env = os.environ if environ is None else environ
        path = config_file or env.get(CONFIG_ENV) or None
        layers: list[tuple[str, dict[str, Any]]] = []
        if path:
            layers.append((f"file {path}", _file_layer(Path(path))))
        env_layer, env_origins = _env_layer(env)
        layers.append(("env", env_layer))
        layers.append(("flag", _drop_none(dict(flags or {}))))
        merged: dict[str, Any] = {}
        origins: dict[str, str] = {}
        for source, layer in layers:
            for dotted, value in _leaves(layer):
                _put(merged, dotted, value)
                origins[dotted] = _origin_name(source, dotted)
        origins.update(env_origins)
        try:
            settings = cls(**merged)
        except PydanticValidationError as error:
            raise ConfigurationError(_describe(error, origins)) from None
        settings._origins = origins
        return settings

    def origin(self, dotted: str) -> str:
        """Where a setting's value came from: ``default``, ``file …``, ``env NAME``, ``flag``."""
        return self._origins.get(dotted, "default")

    def rows(self) -> Iterator[tuple[str, str, str]]:
        """(setting, value with secrets redacted, origin) for every setting."""
        for dotted, _ in described_fields():
            yield dotted, display(self.value(dotted)), self.origin(dotted)

    def value(self, dotted: str) -> Any:
        node: Any = self
        for part in dotted.split("."):
            node = getattr(node, part)
        return node

    def handoff(self) -> str:
        """These settings as JSON, secrets included, for a process this one starts
        (:meth:`from_handoff`): it gets the very values and origins, without reading the
        file and the environment again. Never log it or put it on a command line."""
        return json.dumps({"values": _plain(self.model_dump()), "origins": self._origins})

    @classmethod
    def from_handoff(cls, text: str) -> Settings:
        body = json.loads(text)
        settings = cls(**body["values"])
        settings._origins = dict(body["origins"])
        return settings

    def secrets(self) -> list[str]:
        """Every secret these settings hold (for scrubbing logs)."""
        found = [*map(url_password, self.provider.urls), url_password(self.broker.url)]
        found.append(url_password(self.monitor.email_smtp_url or ""))
        secrets = (self.provider.resend_api_key, self.api.key, self.privacy.hash_secret,
                   self.monitor.slack_url, self.monitor.webhook_secret)  # fmt: skip
        for secret in secrets:
            if secret is not None:
                found.append(secret.get_secret_value())
        if self.encryption_keys is not None:
            keys = self.encryption_keys.get_secret_value()
            found += [keys, *(part.partition(":")[2] for part in keys.split(","))]
        return [s for s in found if s]


def _plain(value: Any) -> Any:
    """A dumped setting as JSON takes it: secrets revealed, paths as text, sets as lists."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, set | frozenset):
        return sorted(value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def described_fields() -> Iterator[tuple[str, FieldInfo]]:
    """Every leaf setting as (dotted name, field), in declaration order."""
    for name, field in Settings.model_fields.items():
        section = field.annotation
        if isinstance(section, type) and issubclass(section, _Section):
            for leaf, leaf_field in section.model_fields.items():
                yield f"{name}.{leaf}", leaf_field
        else:
            yield name, field


def env_name(dotted: str) -> str:
    return ENV_PREFIX + dotted.replace(".", "_").upper()


def markdown_table() -> str:
    """The README's settings table, generated from the fields (a test keeps them equal)."""
    lines = ["| setting | environment | default | meaning |", "| --- | --- | --- | --- |"]
    for dotted, field in described_fields():
        env = f"`{env_name(dotted)}`"
        if dotted == "provider.resend_api_key":
            env += f" or `{RESEND_KEY_ENV}`"
        default = "" if field.default is None else f"`{display(field.default)}`"
        lines.append(f"| `{dotted}` | {env} | {default} | {field.description} |")
    return "\n".join(lines)


# -- secrets ---------------------------------------------------------------------------------
def url_password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def redact_url(url: str) -> str:
    """The URL with its password (if any) replaced by ``***``; a provider chain (URLs
    joined by commas) entry by entry."""
    entries = url.split(",")
    if len(entries) > 1 and all("://" in entry for entry in entries):
        return ",".join(redact_url(entry.strip()) for entry in entries)
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED
    if parts.password is None:
        return url
    userinfo = f"{parts.username}:{REDACTED}" if parts.username else f":{REDACTED}"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{host}"))


def display(value: Any) -> str:
    """A setting's value for people: secrets redacted, URLs without passwords."""
    if value is None:
        return ""
    if isinstance(value, SecretStr):
        return REDACTED
    if isinstance(value, str) and "://" in value:
        return redact_url(value)
    return str(value)


# -- the layers ------------------------------------------------------------------------------
def _file_layer(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigurationError(f"the settings file {path} does not exist")
    from pydantic_settings import TomlConfigSettingsSource

    source_cls = cast("type[BaseSettings]", Settings)  # it reads the fields, not the class
    try:
        return dict(TomlConfigSettingsSource(source_cls, toml_file=path)())
    except ValueError as error:  # tomllib.TOMLDecodeError is a ValueError
        raise ConfigurationError(f"{path} is not valid TOML: {error}") from None


def _env_layer(env: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The environment's settings, and the origins that differ from ``EMAILQ_<NAME>``."""
    layer = _read_env(env)
    key = env.get(RESEND_KEY_ENV)
    if key and "resend_api_key" not in layer.get("provider", {}):
        layer.setdefault("provider", {})["resend_api_key"] = key
        return layer, {"provider.resend_api_key": f"env {RESEND_KEY_ENV}"}
    return layer, {}


def _read_env(env: Mapping[str, str]) -> dict[str, Any]:
    """pydantic-settings' environment source over a given mapping (the process's by
    default): ``EMAILQ_WORKER_LEASE_S`` → ``{"worker": {"lease_s": "…"}}``."""
    from pydantic_settings import EnvSettingsSource

    class MappingEnvSource(EnvSettingsSource):
        def _load_env_vars(self) -> Mapping[str, str | None]:
            return {name.lower(): value for name, value in env.items() if value != ""}

    source = MappingEnvSource(
        cast("type[BaseSettings]", Settings),  # it reads the fields, not the class
        case_sensitive=False,
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="_",
        env_nested_max_split=1,  # EMAILQ_WORKER_LEASE_S → worker.lease_s
        env_ignore_empty=True,
    )
    return dict(source())


def _origin_name(source: str, dotted: str) -> str:
    if source != "env":
        return source
    return f"env {env_name(dotted)}"


def _leaves(layer: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in layer.items():
        dotted = f"{prefix}{key}"
        section = Settings.model_fields.get(key) if not prefix else None
        is_section = (
            section is not None
            and isinstance(section.annotation, type)
            and issubclass(section.annotation, _Section)
        )
        if is_section and isinstance(value, Mapping):
            yield from _leaves(value, f"{dotted}.")
        else:
            yield dotted, value


def _put(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *sections, leaf = dotted.split(".")
    for section in sections:
        tree = tree.setdefault(section, {})
    tree[leaf] = value


def _drop_none(tree: dict[str, Any]) -> dict[str, Any]:
    """Flags left unset arrive as None: they set nothing."""
    kept: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            value = _drop_none(value)
            if value:
                kept[key] = value
        elif value is not None:
            kept[key] = value
    return kept


def _describe(error: PydanticValidationError, origins: Mapping[str, str]) -> str:
    """One line per bad setting, naming it and where its value came from (never the value)."""
    problems = []
    for item in error.errors(include_input=False):
        dotted = ".".join(str(part) for part in item["loc"])
        source = origins.get(dotted, "default")
        problems.append(f"{dotted} ({source}): {item['msg']}")
    return "invalid settings: " + "; ".join(problems)
