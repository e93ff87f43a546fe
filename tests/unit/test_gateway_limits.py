"""Per-key limits as tables: token buckets with a clock passed in, overrides from the flag syntax."""

from __future__ import annotations

import pytest

from voxtral_operator.gateway.limits import (
    AUDIO_SECONDS_PER_MINUTE,
    CONCURRENT_REQUESTS,
    REQUESTS_PER_MINUTE,
    KeyLimiter,
    KeyLimits,
    KeyPolicies,
    parse_override,
)


def test_requests_per_minute_with_retry_after_from_the_bucket() -> None:
    limiter = KeyLimiter()
    limits = KeyLimits(requests_per_minute=6)  # one every 10 s, bursts of 6
    assert all(limiter.admit("k", limits, 0, 0, now=100.0) is None for _ in range(6))
    refusal = limiter.admit("k", limits, 0, 0, now=100.0)
    assert refusal is not None
    assert (refusal.limit, refusal.retry_after, refusal.allowed) == (REQUESTS_PER_MINUTE, 10, 6)
    refusal = limiter.admit("k", limits, 0, 0, now=107.5)
    assert refusal is not None
    assert refusal.retry_after == 3
    assert limiter.admit("k", limits, 0, 0, now=110.0) is None
    assert limiter.admit("other", limits, 0, 0, now=110.0) is None  # a bucket per key


def test_audio_seconds_per_minute() -> None:
    limiter = KeyLimiter()
    limits = KeyLimits(audio_seconds_per_minute=60)  # one audio-second per second
    assert limiter.admit("k", limits, 50, 0, now=0.0) is None
    refusal = limiter.admit("k", limits, 50, 0, now=0.0)
    assert refusal is not None
    assert (refusal.limit, refusal.retry_after) == (AUDIO_SECONDS_PER_MINUTE, 40)
    assert limiter.admit("k", limits, 0, 0, now=0.0) is None  # no audio (chat): not counted
    assert limiter.admit("k", limits, 50, 0, now=40.0) is None


def test_a_request_larger_than_the_bucket_passes_when_full_and_leaves_a_debt() -> None:
    limiter = KeyLimiter()
    limits = KeyLimits(audio_seconds_per_minute=60)
    assert limiter.admit("k", limits, 600, 0, now=0.0) is None  # a 10-minute file
    refusal = limiter.admit("k", limits, 1, 0, now=0.0)
    assert refusal is not None
    assert refusal.retry_after == 541


def test_a_share_below_one_request_per_minute_is_honoured_on_average() -> None:
    limiter = KeyLimiter()
    limits = KeyLimits(requests_per_minute=0.5)  # 1 per minute split across two gateway pods
    assert limiter.admit("k", limits, 0, 0, now=0.0) is None
    refusal = limiter.admit("k", limits, 0, 0, now=0.0)
    assert refusal is not None
    assert refusal.retry_after == 120
    assert limiter.admit("k", limits, 0, 0, now=120.0) is None


def test_concurrency_and_a_refusal_charges_nothing() -> None:
    limiter = KeyLimiter()
    limits = KeyLimits(requests_per_minute=1, concurrent_requests=2)
    refusal = limiter.admit("k", limits, 0, active=2, now=0.0)
    assert refusal is not None
    assert (refusal.limit, refusal.retry_after) == (CONCURRENT_REQUESTS, 1)
    assert limiter.admit("k", limits, 0, active=1, now=0.0) is None  # the minute's one request is still there
    both = KeyLimits(requests_per_minute=60, audio_seconds_per_minute=60)
    assert limiter.admit("j", both, 60, 0, now=0.0) is None
    refusal = limiter.admit("j", both, 30, 0, now=0.0)
    assert refusal is not None
    assert refusal.limit == AUDIO_SECONDS_PER_MINUTE
    for _ in range(59):  # the refused one took no request token
        assert limiter.admit("j", both, 0, 0, now=0.0) is None


def test_overrides_by_entry_name_keep_the_defaults_they_do_not_set() -> None:
    default = KeyLimits(requests_per_minute=60, concurrent_requests=4)
    name, limits = parse_override("alice:weight=4,audio-seconds-per-minute=600", default)
    assert name == "alice"
    assert limits == KeyLimits(weight=4, requests_per_minute=60, audio_seconds_per_minute=600, concurrent_requests=4)
    policies = KeyPolicies(default, {name: limits})
    assert policies.of("alice") is limits
    assert policies.of("bob") is default
    assert policies.of(None) is default


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("alice", "expected NAME:SETTING=VALUE"),
        (":weight=1", "expected NAME:SETTING=VALUE"),
        ("alice:speed=3", "unknown setting 'speed'"),
        ("alice:weight=fast", "must be a number"),
        ("alice:concurrent-requests=1.5", "must be a number"),
        ("alice:requests-per-minute=0", "must be positive"),
        ("alice:weight=-1", "must be positive"),
        ("alice:weight=nan", "must be positive"),
        ("alice:weight=inf", "must be positive"),
    ],
)
def test_a_malformed_override_says_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_override(text, KeyLimits())
