"""Per-key limits of one gateway pod: token buckets and a concurrency cap. No I/O; time is passed in.

A key gets requests per minute, audio-seconds per minute and concurrent requests (queued or in
flight), each optional. The figures here are this pod's share: the operator divides the endpoint's
limits by the number of gateway pods. A bucket holds a minute's worth; a request larger than the
whole bucket passes when the bucket is full and leaves it in debt, so even a share below one
request per minute is honoured on average.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace

REQUESTS_PER_MINUTE = "requests_per_minute"
AUDIO_SECONDS_PER_MINUTE = "audio_seconds_per_minute"
CONCURRENT_REQUESTS = "concurrent_requests"
CONCURRENCY_RETRY_AFTER = 1  # a slot frees when one of the key's requests ends: no bucket says when


@dataclass(frozen=True)
class KeyLimits:
    """A key's weight in the queue and its limits on this pod (None: no limit)."""

    weight: float = 1.0
    requests_per_minute: float | None = None
    audio_seconds_per_minute: float | None = None
    concurrent_requests: int | None = None


@dataclass(frozen=True)
class KeyPolicies:
    """The limits of every key, and the overrides by tenant (the name of the key's Secret entry)."""

    default: KeyLimits = KeyLimits()
    overrides: dict[str, KeyLimits] = field(default_factory=dict)

    def of(self, tenant: str | None) -> KeyLimits:
        if tenant is None:
            return self.default
        return self.overrides.get(tenant, self.default)


_OVERRIDE_FIELDS = {f.name.replace("_", "-"): f.name for f in fields(KeyLimits)}


def parse_override(text: str, default: KeyLimits) -> tuple[str, KeyLimits]:
    """`NAME:weight=W,requests-per-minute=R,...` -> (NAME, limits); unset fields keep the default's.

    Raises ValueError saying what is wrong.
    """
    name, sep, settings = text.partition(":")
    if not name or not sep or not settings:
        raise ValueError(f"{text!r}: expected NAME:SETTING=VALUE[,SETTING=VALUE...]")
    changes: dict[str, float | int] = {}
    for item in settings.split(","):
        setting, _, value = item.partition("=")
        attribute = _OVERRIDE_FIELDS.get(setting.strip())
        if attribute is None:
            raise ValueError(f"{text!r}: unknown setting {setting!r} (one of {', '.join(_OVERRIDE_FIELDS)})")
        try:
            number = int(value) if attribute == CONCURRENT_REQUESTS else float(value)
        except ValueError:
            raise ValueError(f"{text!r}: {setting} must be a number, not {value!r}") from None
        if not number > 0 or math.isinf(number):
            raise ValueError(f"{text!r}: {setting} must be positive and finite, not {value}")
        changes[attribute] = number
    return name, replace(default, **changes)  # type: ignore[arg-type]


@dataclass
class TokenBucket:
    """`capacity` tokens at most, refilled at `rate` per second; may go into debt (see the module)."""

    rate: float
    capacity: float
    tokens: float
    updated: float

    @classmethod
    def per_minute(cls, amount: float, now: float) -> TokenBucket:
        return cls(rate=amount / 60.0, capacity=amount, tokens=amount, updated=now)

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def wait(self, amount: float, now: float) -> float:
        """Seconds until `amount` (at most a full bucket) can be taken; 0: now."""
        self._refill(now)
        missing = min(amount, self.capacity) - self.tokens
        return max(0.0, missing / self.rate)

    def take(self, amount: float, now: float) -> None:
        self._refill(now)
        self.tokens -= amount


@dataclass(frozen=True)
class Refusal:
    """Which limit refused a request, and when to retry (whole seconds, at least 1)."""

    limit: str
    retry_after: int
    allowed: float


class KeyLimiter:
    """The rate buckets of every key seen, by key id."""

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str], TokenBucket] = {}

    def _bucket(self, key: str, limit: str, amount: float, now: float) -> TokenBucket:
        bucket = self._buckets.get((key, limit))
        if bucket is None or bucket.capacity != amount:  # new key, or its limit changed
            bucket = self._buckets[(key, limit)] = TokenBucket.per_minute(amount, now)
        return bucket

    def admit(
        self, key: str, limits: KeyLimits, audio_seconds: float, active: int, now: float, *, charge: bool = True
    ) -> Refusal | None:
        """Charge one request of `audio_seconds` to the key (unless `charge` is False: `charge` it once it is
        placed), or say which limit refuses it (nothing charged).

        `active`: the key's requests queued or in flight on this pod now.
        """
        if limits.concurrent_requests is not None and active >= limits.concurrent_requests:
            return Refusal(CONCURRENT_REQUESTS, CONCURRENCY_RETRY_AFTER, limits.concurrent_requests)
        wanted = self._wanted(key, limits, audio_seconds, now)
        refusal = _longest_wait(wanted, now)
        if refusal is None and charge:
            _take(wanted, now)
        return refusal

    def _wanted(
        self, key: str, limits: KeyLimits, audio_seconds: float, now: float, *, requests: bool = True
    ) -> list[tuple[str, float, TokenBucket]]:
        """(limit, amount, bucket) of what one request of `audio_seconds` takes (`requests`: one request too)."""
        wanted: list[tuple[str, float, TokenBucket]] = []
        if requests and limits.requests_per_minute is not None:
            bucket = self._bucket(key, REQUESTS_PER_MINUTE, limits.requests_per_minute, now)
            wanted.append((REQUESTS_PER_MINUTE, 1.0, bucket))
        if limits.audio_seconds_per_minute is not None and audio_seconds > 0:
            bucket = self._bucket(key, AUDIO_SECONDS_PER_MINUTE, limits.audio_seconds_per_minute, now)
            wanted.append((AUDIO_SECONDS_PER_MINUTE, audio_seconds, bucket))
        return wanted

    def charge(self, key: str, limits: KeyLimits, audio_seconds: float, now: float) -> None:
        """Take one request of `audio_seconds` from the key's buckets (admitted: queued or dispatched)."""
        _take(self._wanted(key, limits, audio_seconds, now), now)

    def refund(self, key: str, limits: KeyLimits, audio_seconds: float, now: float) -> None:
        """Give back what `charge` took for a request refused after all (pushed out of a full queue)."""
        for _, amount, bucket in self._wanted(key, limits, audio_seconds, now):
            bucket.take(-amount, now)
            bucket.tokens = min(bucket.capacity, bucket.tokens)

    def admit_audio(self, key: str, limits: KeyLimits, audio_seconds: float, now: float) -> Refusal | None:
        """Charge `audio_seconds` alone to the key (a realtime session's append), or say the audio limit
        refuses them (nothing charged)."""
        wanted = self._wanted(key, limits, audio_seconds, now, requests=False)
        refusal = _longest_wait(wanted, now)
        if refusal is None:
            _take(wanted, now)
        return refusal


def _take(wanted: list[tuple[str, float, TokenBucket]], now: float) -> None:
    for _, amount, bucket in wanted:
        bucket.take(amount, now)


def _longest_wait(wanted: list[tuple[str, float, TokenBucket]], now: float) -> Refusal | None:
    """The refusal of the limit whose bucket makes the longest wait for its amount; None when none does."""
    waits = [(bucket.wait(amount, now), limit, bucket) for limit, amount, bucket in wanted]
    longest = max(waits, key=lambda entry: entry[0], default=None)
    if longest is not None and longest[0] > 1e-9:  # float dust is not a wait
        wait, limit, bucket = longest
        return Refusal(limit, max(1, math.ceil(wait)), bucket.capacity)
    return None
