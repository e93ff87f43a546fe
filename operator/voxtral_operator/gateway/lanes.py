"""The two lanes of a gateway pod and the rule that admits deferrable work: pure, no I/O.

A request is interactive unless its caller marks it deferrable, as the OpenAI API does:
`"service_tier": "flex"` in a JSON body (chat, completions), a `service_tier` form field in a
multipart one (transcriptions, translations). `auto` and `default` are interactive; any other
value is refused with 400 rather than guessed at.

The rule (the policy simulation implements the same one):
- interactive work may use every in-flight slot this gateway pod has on a replica;
- deferrable work is admitted to a replica only while no interactive request waits in this pod's
  queue, the replica has fewer than its slots minus a headroom in flight (an eighth of the slots,
  at least one), and the replica's outstanding KV tokens as this pod counts them (`Work.kv_tokens`
  of every request it has in flight there, both lanes), with the request's, stay within this pod's
  share of the replica's KV cache. vLLM's real limit is its KV cache, not its
  sequence slots: a slot bound alone lets long deferrable transcriptions fill the cache, and an
  interactive request sent into the free slots then waits in vLLM's first-come-first-served queue
  behind them. A replica this pod has nothing in flight on takes one deferrable request whatever
  its size (else a request larger than the bound would never run);
- an interactive request that waits in vLLM's queue behind deferrable work gets it taken back: every
  TAKE_BACK_READ_SECONDS a gateway pod reads `vllm:num_requests_waiting` of each replica where it has an
  unanswered interactive request beside deferrable requests it can send again, and if one of its
  interactive requests may be among those waiting, takes back its deferrable requests sent before it,
  newest first, until their KV tokens cover the interactive ones' (`to_take_back_on_waiting`): the
  gateway aborts them and sends them again later, from the start. Only requests whose body the
  gateway kept can be taken back (app.ResendBuffers), and only until the replica answers (a stream: its first
  event, since vLLM sends its headers before scheduling it). A gateway
  started with `--take-back-read-seconds 0` instead takes back when it sends an interactive request
  whose KV tokens do not fit beside what the pod has in flight there (`to_take_back`), unless another
  replica has room: that count is of whole sequences from the moment they are sent, while vLLM holds
  the prompt and the tokens produced so far, so it took back twice as often and finished less of the
  nightly backlogs by their deadline (bench/policy_sim.py --reserved-target at 11,000 a night, three draws:
  668,305 of 693,000 by the count, 683,785 on reads, the interactive tails alike);
- where vLLM runs `--scheduling-policy priority`, deferrable chat and completions requests carry
  a larger `priority` number (lower priority) than interactive ones (0); the caller sets none.

What this buys, and its limits: an interactive arrival finds a free slot; where deferrable work holds
the KV cache it needs (the lane may fill the pod's whole share, and the estimates are estimates), it
goes to a replica with room by the pod's count, or else waits in vLLM's queue about a read interval
and an abort before deferrable work is taken back for it, not until that work finishes. What vLLM
reports is the replica's, not this pod's: the pod's waiting requests are among its newest there, so an
interactive request that is in fact running may be taken for a waiting one (deferrable work taken back
it did not need to be), and another pod's deferrable work is not this pod's to take back: an
interactive request that waits behind only that waits for it. Interactive work that itself fills the
cache can still wait (transcriptions carry no priority in vLLM's queue); without a KV size
(`--kv-cache-tokens-per-replica` 0) only the slots bound deferrable work.

The gateway reads the tier only from what it has read before dispatch: the body's first 64 KiB, or
a whole JSON body that names no tier in those (the OpenAI SDK writes `service_tier` after
`messages`), as long as its pod's budget for such bodies allows (app.JsonBuffers). When the rest of
a body streams, a `service_tier` (or, where the gateway sets it, `priority`) that shows up in it
cannot be honoured: `LateFieldWatch` finds it and the request fails (400 `LATE_FIELD`, or 503
`LATE_FIELD_BUFFERS_FULL` when only the budget kept a JSON body from being read whole) before the
replica answers, since the replica is still reading the body, instead of running in a lane it did
not ask for.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from voxtral_operator.gateway.framing import Refusal
from voxtral_operator.gateway.work import form_parts

INTERACTIVE = "interactive"
DEFERRABLE = "deferrable"
LANES = (INTERACTIVE, DEFERRABLE)
TIERS = {"auto": INTERACTIVE, "default": INTERACTIVE, "flex": DEFERRABLE}
PRIORITY_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions"})
DEFERRABLE_PRIORITY = 10  # vLLM runs lower numbers first; interactive requests carry 0
HEADROOM_SHARE = 8  # deferrable work leaves an eighth of a replica's slots to interactive arrivals
# How often a gateway pod reads vllm:num_requests_waiting where one of its interactive requests may wait
# behind deferrable work (to_take_back_on_waiting): the longest it waits there before it is taken back.
TAKE_BACK_READ_SECONDS = 1


def headroom(slots: int) -> int:
    """Slots per replica deferrable work leaves free for interactive arrivals."""
    return max(1, slots // HEADROOM_SHARE)


def deferrable_slots(slots: int) -> int:
    """In-flight requests per replica below which deferrable work may still be admitted."""
    return max(0, slots - headroom(slots))


def deferrable_kv_tokens(kv_tokens: int) -> int:
    """This pod's outstanding KV tokens per replica deferrable work stays within: its whole share. An interactive
    request that does not fit beside it takes deferrable work back (`to_take_back`): a headroom of KV cache
    left idle for it cost the deferrable lane more than the work taken back (bench/policy_sim.py
    --reserved-target: 188,670 of 231,000 done by their deadline with an eighth left, 222,730 with none)."""
    return kv_tokens


def kv_admits(outstanding_tokens: int, tokens: int, kv_tokens: int) -> bool:
    """Whether a deferrable request of `tokens` fits a replica this pod has `outstanding_tokens` in flight on,
    within its share `kv_tokens` of the replica's KV cache less the headroom (0: size unknown, no bound)."""
    if kv_tokens <= 0 or outstanding_tokens <= 0:
        return True
    return outstanding_tokens + tokens <= deferrable_kv_tokens(kv_tokens)


def admits(
    lane: str,
    inflight: int,
    slots: int,
    interactive_waiting: int,
    outstanding_tokens: int = 0,
    tokens: int = 0,
    kv_tokens: int = 0,
) -> bool:
    """Whether a request of `lane` (and `tokens` KV tokens) may go to a replica with `inflight` of this
    pod's `slots` taken and `outstanding_tokens` of this pod's share `kv_tokens` of its KV cache counted."""
    if lane == DEFERRABLE:
        return (
            interactive_waiting == 0
            and inflight < deferrable_slots(slots)
            and kv_admits(outstanding_tokens, tokens, kv_tokens)
        )
    return inflight < slots


def to_take_back(outstanding_tokens: int, kv_tokens: int, retractable: Sequence[int]) -> list[int]:
    """Which deferrable requests an interactive request takes back from a replica: indexes into `retractable`
    (each request's KV tokens, in dispatch order), newest first, until the replica's outstanding tokens (the
    interactive request's included) fit this pod's share `kv_tokens`, or none is left. [] when they fit."""
    excess = outstanding_tokens - kv_tokens
    taken: list[int] = []
    for index in range(len(retractable) - 1, -1, -1):
        if excess <= 0:
            break
        taken.append(index)
        excess -= retractable[index]
    return taken


@dataclass(frozen=True)
class Unanswered:
    """One of this pod's requests on a replica that the replica has not answered yet."""

    deferrable: bool
    kv_tokens: int
    retractable: bool = False  # deferrable, and its body kept: it can be sent again


def to_take_back_on_waiting(waiting: int, unanswered: Sequence[Unanswered]) -> list[int]:
    """Which of this pod's deferrable requests on a replica to take back after reading that `waiting` requests
    wait in its vLLM queue: indexes into `unanswered` (this pod's unanswered requests there, in dispatch order).

    vLLM's queue holds the requests sent to it last (first come, first served), so this pod's waiting ones are
    among its `waiting` newest. If an interactive request is among those, deferrable requests sent before the
    newest such one (running, or ahead of it in the queue) are taken back, newest first, until their KV tokens
    cover the interactive ones'. Deferrable requests sent after it are behind it in the queue: left alone."""
    if waiting <= 0:
        return []
    suspects = range(max(0, len(unanswered) - waiting), len(unanswered))
    interactive = [index for index in suspects if not unanswered[index].deferrable]
    if not interactive:
        return []
    short = sum(unanswered[index].kv_tokens for index in interactive)
    taken: list[int] = []
    for index in range(interactive[-1] - 1, -1, -1):
        if short <= 0:
            break
        request = unanswered[index]
        if request.deferrable and request.retractable:
            taken.append(index)
            short -= request.kv_tokens
    return taken


# --- the caller's tier ------------------------------------------------------------------------


def _unknown_tier(value: object) -> Refusal:
    shown = json.dumps(value)[:40] if isinstance(value, str | int | float | bool) else type(value).__name__
    return Refusal(
        400, f"Bad request: service_tier {shown} is not one of auto, default or flex", "invalid_service_tier"
    )


def lane_of_tier(value: object) -> str | Refusal:
    """The lane a `service_tier` value asks for (absent or null: interactive)."""
    if value is None:
        return INTERACTIVE
    if isinstance(value, str) and value in TIERS:
        return TIERS[value]
    return _unknown_tier(value)


QUOTED_TIER = b'"service_tier"'
_QUOTED_PRIORITY = b'"priority"'
_TIER_MEMBER = re.compile(rb'"service_tier"\s*:\s*(null|"[^"\\]{0,40}")')
_LATE_TIER = Refusal(
    400,
    "Bad request: the service_tier field must come before the file part, within the body's first 64 KiB, for "
    "the gateway to queue the request in its lane",
    "service_tier_too_late",
)


_NOT_UTF8 = Refusal(
    400,
    "Bad request: the JSON body is not UTF-8 (a UTF-16 or UTF-32 byte order mark, or NUL in its first bytes); "
    "send it as UTF-8",
    "json_not_utf8",
)


def utf8_json(prefix: bytes) -> Refusal | None:
    """A refusal for a JSON body in UTF-16 or UTF-32, which Python's json.loads (so vLLM) reads as well: the
    gateway reads `service_tier` and `priority` in UTF-8 bytes and would miss them there. RFC 8259 asks for
    UTF-8; such a body starts with a byte order mark or has a NUL among its first four bytes."""
    if prefix.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in prefix[:4]:
        return _NOT_UTF8
    return None


@dataclass(frozen=True)
class Tier:
    """What the body says of its lane, and what to watch for in the part of it not read yet."""

    lane: str
    watch: tuple[bytes, ...] = ()  # byte strings that, found later in the body, fail the request


def json_tier(prefix: bytes, complete: bool) -> Tier | Refusal:
    """The lane of a JSON body whose first bytes are `prefix` (`complete`: the whole body).

    A complete body that is not a JSON object is left to the replica to refuse (interactive). Of a
    longer body only the prefix is known: one `"service_tier": VALUE` member there decides; two are
    refused; none means interactive, and the rest of the body is watched for one.
    """
    if complete:
        if QUOTED_TIER not in prefix:
            return Tier(INTERACTIVE)  # an object without the member, or not one: either way, no parse
        try:
            body = json.loads(prefix)
        except (ValueError, RecursionError):
            return Tier(INTERACTIVE)
        if not isinstance(body, dict):
            return Tier(INTERACTIVE)
        lane = lane_of_tier(body.get("service_tier"))
        return lane if isinstance(lane, Refusal) else Tier(lane)
    found = prefix.count(QUOTED_TIER)
    if found == 0:
        return Tier(INTERACTIVE, watch=(QUOTED_TIER,))
    match = _TIER_MEMBER.search(prefix)
    if found > 1 or match is None:
        return Refusal(400, "Bad request: service_tier must appear once, as a string", "invalid_service_tier")
    lane = lane_of_tier(json.loads(match.group(1)))
    return lane if isinstance(lane, Refusal) else Tier(lane)


TIER_FIELD = b"service_tier"  # watched for in the rest of a multipart body, however its part names it
_AMBIGUOUS_PART = Refusal(
    400,
    "Bad request: a multipart part's Content-Disposition is repeated, malformed or not ASCII",
    "bad_request",
)


def multipart_tier(prefix: bytes, boundary: str, complete: bool) -> Tier | Refusal:
    """The lane of a multipart body from its `service_tier` field (which must precede the file part
    when the body is longer than what was read). Part headers are read as aiohttp and python-multipart
    read them (names in any case, values quoted or not); what they could read otherwise is refused."""
    parts = form_parts(prefix, boundary)
    fields = [part.fields for part in parts]
    if any(found is None for found in fields):
        return _AMBIGUOUS_PART
    tiers = [part for part in parts if part.fields is not None and part.fields.get("name") == "service_tier"]
    if not tiers:
        return Tier(INTERACTIVE, watch=() if complete else (TIER_FIELD,))
    if len(tiers) > 1:
        return Refusal(400, "Bad request: more than one service_tier field", "invalid_service_tier")
    part = tiers[0]
    if part.data_end < 0:
        return _LATE_TIER
    try:
        value = prefix[part.data_start : part.data_end].decode("ascii").strip()
    except UnicodeDecodeError:
        return _unknown_tier("(not ASCII)")
    lane = lane_of_tier(value)
    return lane if isinstance(lane, Refusal) else Tier(lane)


_WHITESPACE = b" \t\r\n"
_NOT_AN_OBJECT = Refusal(400, "Bad request: the body is not a JSON object", "bad_request")
_OWN_PRIORITY = Refusal(
    400,
    "Bad request: priority is set by the gateway (its replicas schedule by it); send the request without it",
    "priority_not_allowed",
)


@dataclass(frozen=True)
class Priority:
    """A JSON body as the gateway sends it on where vLLM schedules by `priority`."""

    prefix: bytes  # the body's prefix, the gateway's member first when the body is complete
    watch: tuple[bytes, ...] = ()  # byte strings that, found later in the body, fail the request
    closing: bytes = b""  # for a body that streams: the member to put before its final `}`


def with_priority(prefix: bytes, complete: bool, priority: int) -> Priority | Refusal:
    """A JSON body with the gateway's `"priority": N` (0 for interactive work, which vLLM runs first).

    The gateway owns vLLM's priority: a body that brings its own is refused, in either lane (an
    interactive caller's negative number would run ahead of every other caller's work; a deferrable
    one's would undo its lane). A complete body is parsed when its bytes could spell the member
    (escapes included), and gets the gateway's member first unless it is 0 (vLLM's default). A body
    that streams is refused if its prefix names one and watched for one in the rest; a member spelt
    with escapes cannot be found that way, so the gateway's own goes last, where vLLM, reading the
    last of duplicate members, takes it whatever came before.
    """
    stripped = prefix.lstrip(_WHITESPACE)
    if not stripped.startswith(b"{"):
        return _NOT_AN_OBJECT
    member = b'"priority":' + str(priority).encode()
    if not complete:
        if _QUOTED_PRIORITY in prefix:
            return _OWN_PRIORITY
        return Priority(prefix, watch=(_QUOTED_PRIORITY,), closing=b"," + member)
    if _QUOTED_PRIORITY in prefix or b"\\u" in prefix:
        try:
            body = json.loads(prefix)
        except (ValueError, RecursionError):
            return _NOT_AN_OBJECT
        if not isinstance(body, dict):
            return _NOT_AN_OBJECT
        if "priority" in body:
            return _OWN_PRIORITY
    if priority == 0:
        return Priority(prefix)
    rest = stripped[1:]
    separator = b"" if rest.lstrip(_WHITESPACE).startswith(b"}") else b","
    return Priority(b"{" + member + separator + rest)


class BeforeClosingBrace:
    """Passes a JSON object through chunk by chunk, putting `member` before its final `}` (held back until
    the body ends, with any whitespace after it). A body that does not end in `}` passes unchanged: it is
    no JSON object, and the replica refuses it."""

    def __init__(self, member: bytes) -> None:
        self.member = member
        self._held = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._held + chunk
        end = len(data.rstrip(_WHITESPACE))
        split = end - 1 if end and data[end - 1 : end] == b"}" else end
        self._held = data[split:]
        return data[:split]

    def close(self) -> bytes:
        held, self._held = self._held, b""
        return self.member + held if held.startswith(b"}") else held


class LateFieldWatch:
    """Finds any of some byte strings in a stream given chunk by chunk (a match may span chunks)."""

    def __init__(self, patterns: tuple[bytes, ...]) -> None:
        self.patterns = patterns
        self._keep = max((len(p) for p in patterns), default=1) - 1
        self._tail = b""

    def found(self, chunk: bytes) -> bool:
        if not self.patterns:
            return False
        window = self._tail + chunk
        self._tail = window[-self._keep :] if self._keep else b""
        return any(pattern in window for pattern in self.patterns)


LATE_FIELD = Refusal(
    400,
    "Bad request: service_tier (or priority) appears after what the gateway read before dispatch (64 KiB, or "
    "a whole JSON body when it is not too busy); put service_tier before large fields such as inline audio or "
    "the file part, and leave priority to the gateway",
    "service_tier_too_late",
)
# The same, for a JSON body the gateway would have read whole but for its pod's budget: the caller did
# nothing wrong, so the answer is one to retry (the OpenAI SDK retries a 503 by itself).
LATE_FIELD_BUFFERS_FULL = Refusal(
    503,
    "Service unavailable: this gateway pod holds too many large JSON bodies to read this one whole, and its "
    "service_tier (or priority) comes after the first 64 KiB; retry, or put service_tier before messages",
    "gateway_busy",
)
