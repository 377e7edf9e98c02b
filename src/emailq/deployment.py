"""One emailq deployment, opened from its broker URL: everything a process of it needs.

A :class:`Deployment` owns the broker and what lives beside it (the rate limiter and the
API key store share its connection or file), the lane policy, the settings, and opens
providers from them. Every command (``worker``, ``run``, ``serve``, ``send``, ``status``,
``keys``, ``demo``) starts from one, and so can an application that embeds emailq::

    with Deployment.from_url("sqlite:///emailq.db") as emailq:
        queued = emailq.send({"from": "hi@example.com", "to": "guest@example.org",
                              "subject": "Ceremony moved", "text": "…"})
        print(emailq.status().backlog, emailq.health().ready)
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

from emailq.broker import Broker, BrokerOptions, NewMessage, Stats, open_broker
from emailq.broker.base import DEFAULT_PATIENCE_S
from emailq.clock import Clock, now
from emailq.errors import ConfigurationError, FieldError, InvalidEmail
from emailq.failover import FailoverPolicy, HealthBoard, HealthStore
from emailq.failover.state import ProviderStatus, statuses
from emailq.lanes import Lane
from emailq.message import Email, parse_email
from emailq.policy import DEFAULT_POLICY, Policy
from emailq.privacy.erasure import (
    DEVELOPMENT_SECRET,
    ErasureCounts,
    RecipientHasher,
    checked_address,
)
from emailq.providers.base import Provider
from emailq.providers.chain import ProviderChain
from emailq.providers.factory import open_provider, provider_names
from emailq.ratelimit import Limiter
from emailq.ratelimit.rules import RateRules
from emailq.settings import Settings
from emailq.worker import WorkerSettings

if TYPE_CHECKING:  # each imported where it is opened: a worker process needs none of them
    from emailq.batches.registry import BatchRegistry
    from emailq.intake import Queued
    from emailq.keys import KeyStore
    from emailq.privacy.sealing import Sealer
    from emailq.webhooks.store import WebhookStore

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Health:
    """What ``/health/ready`` reports: can the broker take mail (``broker_error`` says why
    not: unreachable, full), does the provider answer."""

    broker: bool
    provider: bool
    broker_error: str | None = None

    @property
    def ready(self) -> bool:
        return self.broker and self.provider


class Deployment:
    """Open with :meth:`from_url` or :meth:`from_settings`; close with :meth:`close` (or
    use it as a context manager, sync or async)."""

    def __init__(
        self, settings: Settings, *, clock: Clock = now, patience_s: float | None = None
    ) -> None:
        """``patience_s``: how long a broker call rides out an unreachable Redis (default a
        minute, a failover's length; the API waits :attr:`ApiSection.broker_patience_s`)."""
        self.settings = settings
        self.clock = clock
        options = BrokerOptions(
            idempotency_ttl=settings.broker.idempotency_ttl_s,
            retention=settings.broker.retention_s,
            max_age={lane: getattr(settings.broker, f"max_age_{lane.value}_s") for lane in Lane},
            check_payloads=True,
            retain_sent_payloads=settings.broker.retain_sent_bodies,
            patience_s=patience_s or DEFAULT_PATIENCE_S,
            dead_payload_retention=settings.privacy.dead_body_retention_s,
            audit=settings.privacy.audit,
            audit_retention=settings.privacy.audit_retention_s,
            sealer=_sealer(settings),
        )
        self.broker: Broker = open_broker(settings.broker.url, options, clock)
        secret = settings.privacy.hash_secret
        if secret is None:
            log.warning("privacy.hash_secret is not set: recipient hashes use a built-in"
                        " secret; set EMAILQ_PRIVACY_HASH_SECRET")  # fmt: skip
        self.hasher = RecipientHasher(secret.get_secret_value() if secret else DEVELOPMENT_SECRET)

    @classmethod
    def from_url(
        cls, broker_url: str | None = None, *, clock: Clock = now, **sections: Any
    ) -> Deployment:
        """Settings from the file and environment; ``broker_url`` and ``sections`` (nested
        dicts such as ``worker={"lease_s": 5}``) override them, as command-line flags do."""
        flags: dict[str, Any] = dict(sections)
        if broker_url is not None:
            flags["broker"] = {**flags.get("broker", {}), "url": broker_url}
        return cls(Settings.load(flags=flags), clock=clock)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, clock: Clock = now, patience_s: float | None = None
    ) -> Deployment:
        return cls(settings, clock=clock, patience_s=patience_s)

    # -- what lives beside the queue ------------------------------------------------------
    @cached_property
    def limiter(self) -> Limiter:
        """Rate limits shared by every process of this queue: in its SQLite file or Redis."""
        from emailq.broker.sqlite import SQLiteBroker

        if isinstance(self.broker, SQLiteBroker):
            from emailq.ratelimit.sqlite import SQLiteLimiter

            return SQLiteLimiter(self.broker.path, self.clock)
        from emailq.broker.redis import RedisBroker
        from emailq.ratelimit.redis import RedisLimiter

        assert isinstance(self.broker, RedisBroker)
        return RedisLimiter(self.broker.client, self.broker.prefix)

    @cached_property
    def keys(self) -> KeyStore:
        """The API keys of this queue (hashed), beside its messages."""
        from emailq.broker.sqlite import SQLiteBroker
        from emailq.keys import RedisKeyStore, SQLiteKeyStore

        if isinstance(self.broker, SQLiteBroker):
            return SQLiteKeyStore(self.broker.path, self.clock)
        from emailq.broker.redis import RedisBroker

        assert isinstance(self.broker, RedisBroker)
        return RedisKeyStore(self.broker.client, self.broker.prefix, self.clock)

    @cached_property
    def batches(self) -> BatchRegistry:
        """The batch records (emailq.batches), beside the messages like the keys."""
        from emailq.batches.registry import RedisBatchRegistry, SQLiteBatchRegistry
        from emailq.broker.sqlite import SQLiteBroker

        if isinstance(self.broker, SQLiteBroker):
            return SQLiteBatchRegistry(self.broker.path)
        from emailq.broker.redis import RedisBroker

        assert isinstance(self.broker, RedisBroker)
        options = self.broker.options
        ttl = max(options.max_age.values()) + options.retention  # as long as its messages
        return RedisBatchRegistry(self.broker.client, self.broker.prefix, ttl)

    @cached_property
    def webhooks(self) -> WebhookStore:
        """Webhook endpoints and deliveries (emailq.webhooks), beside the messages."""
        from emailq.broker.sqlite import SQLiteBroker
        from emailq.webhooks.store_redis import RedisWebhookStore
        from emailq.webhooks.store_sqlite import SQLiteWebhookStore

        if isinstance(self.broker, SQLiteBroker):
            return SQLiteWebhookStore(self.broker.path)
        from emailq.broker.redis import RedisBroker

        assert isinstance(self.broker, RedisBroker)
        return RedisWebhookStore(self.broker.client, self.broker.prefix)

    @cached_property
    def policy(self) -> Policy:
        path = self.settings.policy_file
        if path is None:
            return DEFAULT_POLICY
        try:
            return Policy.from_toml(path)
        except (OSError, ValueError) as error:
            raise ConfigurationError(f"policy_file {path}: {error}") from None

    def open_provider(self) -> Provider:
        """A new provider with connections of its own (a worker opens two: one for the
        express lane, so critical mail never waits behind a bulk batch's sends). Several
        URLs make a failover chain; the chains of one process share one health board."""
        urls = self.settings.provider.urls
        if len(urls) == 1:
            return self._open_one(urls[0])
        board = self.provider_board
        return ProviderChain([self._open_one(url) for url in urls], board.names, board,
                             unsure_retries=self.settings.provider.unsure_retries)  # fmt: skip

    def _open_one(self, url: str) -> Provider:
        key = self.settings.provider.resend_api_key
        return open_provider(url, resend_api_key=key.get_secret_value() if key else None)

    def failover_policy(self) -> FailoverPolicy:
        p = self.settings.provider
        return FailoverPolicy(
            check_interval_s=p.check_interval_s,
            fail_after=p.fail_after_checks,
            failback_s=p.failback_s,
            breaker_failures=p.breaker_failures,
            breaker_window_s=p.breaker_window_s,
            check_timeout_s=p.check_timeout_s,
            failback_ramp_s=p.failback_ramp_s,
        )

    @cached_property
    def provider_board(self) -> HealthBoard:
        """This process's view of the chain's health (checks run by one process at a time)."""
        urls = self.settings.provider.urls
        checkers = [self._open_one(url) for url in urls]  # connections of their own
        return HealthBoard(provider_names(urls), checkers, self.health_store,
                           self.failover_policy(), clock=self.clock)  # fmt: skip

    @cached_property
    def health_store(self) -> HealthStore:
        """The chain's health records, beside the queue: in its SQLite file or Redis."""
        from emailq.broker.sqlite import SQLiteBroker

        if isinstance(self.broker, SQLiteBroker):
            from emailq.failover.sqlite import SQLiteHealthStore

            return SQLiteHealthStore(self.broker.path, self.clock)
        from emailq.broker.redis import RedisBroker
        from emailq.failover.redis import RedisHealthStore

        assert isinstance(self.broker, RedisBroker)
        return RedisHealthStore(self.broker.client, self.broker.prefix)

    def providers(self) -> list[ProviderStatus]:
        """Each provider of the chain: state, last check, failed checks (``emailq providers``)."""
        urls = self.settings.provider.urls
        return statuses(provider_names(urls), self.health_store.read())

    def worker_settings(self, **overrides: Any) -> WorkerSettings:
        w = self.settings.worker
        settings = WorkerSettings(
            batch_size=w.batch_size,
            concurrency=w.concurrency,
            lease_s=w.lease_s,
            retry_base_s=w.retry_base_s,
            shutdown_timeout=w.shutdown_timeout_s,
            domain=self.settings.domain,
        )
        return replace(settings, **overrides)

    def rate_rules(self) -> RateRules:
        limits = self.settings.limits
        return RateRules(
            provider_rate=limits.provider_rate,
            domain_rate=limits.domain_rate,
            tenant_rate=limits.tenant_rate,
            critical_reserve=limits.critical_reserve,
        )

    # -- intake: what POST /v1/emails does, from Python -----------------------------------
    def send(
        self, email: Email | Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> Queued:
        """Validate, place in its lane by the policy, and queue one email."""
        return self.send_many([email], idempotency_keys=[idempotency_key])[0]

    def send_many(
        self,
        emails: Sequence[Email | Mapping[str, Any]],
        *,
        idempotency_keys: Sequence[str | None] | None = None,
    ) -> list[Queued]:
        """Queue several emails, all or none: any invalid one raises
        :class:`emailq.errors.InvalidEmail` naming its index and field before anything is
        queued."""
        keys = list(idempotency_keys) if idempotency_keys is not None else [None] * len(emails)
        if len(keys) != len(emails):
            raise ValueError("idempotency_keys must have one entry per email")
        pairs = enumerate(zip(emails, keys, strict=True))
        parsed = [_parse(email, index, key) for index, (email, key) in pairs]
        at = datetime.fromtimestamp(self.clock(), UTC)
        messages = [self.to_message(email, at) for email in parsed]
        ids = self.broker.enqueue_many(messages)
        from emailq.intake import Queued

        return [Queued(i, m.lane.value) for i, m in zip(ids, messages, strict=True)]

    def to_message(self, email: Email, at: datetime, key_id: str | None = None) -> NewMessage:
        """The queue message for a validated email: its lane, its addresses' hashes."""
        from emailq.intake import to_new_message

        return to_new_message(email, at, self.policy, hasher=self.hasher, key_id=key_id)

    # -- data protection: erasure (art. 17) and access (art. 15) ---------------------------
    def erase(self, address: str, tenant: str | None = None) -> ErasureCounts:
        """Erase an address from every record of ``tenant`` (None: every tenant's)."""
        return self.broker.erase_recipient(self.hasher.hash(checked_address(address)), tenant)

    def export(self, address: str, tenant: str | None = None) -> dict[str, Any]:
        """What is held about an address: its hash, each message naming it (its record and
        its audit trail). Bodies are not repeated here; ``body_held`` says if one is."""
        recipient_hash = self.hasher.hash(checked_address(address))
        messages = []
        for info in self.broker.find_recipient(recipient_hash, tenant):
            record = {k: getattr(info, k) for k in info.__dataclass_fields__}
            record["state"], record["lane"] = info.state.value, info.lane.value
            events = [json.loads(e.to_json()) for e in self.broker.events(info.id)]
            erased = any(e["kind"] == "erased" for e in events)
            messages.append(record | {"body_held": not erased, "events": events})
        return {"recipient_hash": recipient_hash, "messages": messages}

    async def asend(
        self, email: Email | Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> Queued:
        return await asyncio.to_thread(self.send, email, idempotency_key=idempotency_key)

    async def asend_many(
        self,
        emails: Sequence[Email | Mapping[str, Any]],
        *,
        idempotency_keys: Sequence[str | None] | None = None,
    ) -> list[Queued]:
        return await asyncio.to_thread(self.send_many, emails, idempotency_keys=idempotency_keys)

    # -- questions an operator asks -------------------------------------------------------
    def status(self) -> Stats:
        """Depth per lane and state, and the oldest ready message's age (``emailq status``)."""
        return self.broker.stats()

    def health(self, check_provider: bool = True) -> Health:
        """Whether the broker answers and the provider is reachable (``/health/ready``)."""
        problem = self.broker.check()  # reachable, not full; never raises
        from emailq.probes import provider_reachable

        provider_ok = provider_reachable(self.settings.provider.url) if check_provider else True
        return Health(broker=problem is None, provider=provider_ok, broker_error=problem)

    async def ahealth(self, check_provider: bool = True) -> Health:
        return await asyncio.to_thread(self.health, check_provider)

    # -- life -----------------------------------------------------------------------------
    def close(self) -> None:
        for name in ("limiter", "keys", "health_store", "batches", "webhooks"):
            opened = self.__dict__.pop(name, None)
            close = getattr(opened, "close", None)
            if close is not None:
                close()
        self.broker.close()

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Deployment:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.close)

    def __repr__(self) -> str:
        from emailq.settings import redact_url

        return f"Deployment({redact_url(self.settings.broker.url)!r})"


def _sealer(settings: Settings) -> Sealer | None:
    keys = settings.encryption_keys
    if keys is None:
        return None
    from emailq.privacy.sealing import Sealer

    return Sealer.from_text(keys.get_secret_value())


def _parse(email: Email | Mapping[str, Any], index: int, key: str | None) -> Email:
    """The email validated as the API validates it; errors name ``<index>.<field>``."""
    if isinstance(email, Email):
        if key is None:
            return email
        data = email.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    else:
        data = dict(email)
    if key is not None:
        data["idempotency_key"] = key
    try:
        return parse_email(data)
    except InvalidEmail as error:
        raise InvalidEmail(
            [
                FieldError(f"{index}.{e.field}" if e.field else str(index), e.message)
                for e in error.errors
            ]
        ) from None
