"""The deferrable lane: the admission rule, how a body names its tier, and the dispatcher's two queues."""

from __future__ import annotations

import asyncio
import json

import pytest
from prometheus_client import generate_latest

from voxtral_operator.autoscale.loop import gateway_sample, lanes_status
from voxtral_operator.autoscale.scrape import GatewayPage, LanePage, parse_gateway_metrics
from voxtral_operator.gateway import lanes
from voxtral_operator.gateway.dispatch import Dispatcher, Lease, QueueFull, QueueTimeout
from voxtral_operator.gateway.framing import Refusal
from voxtral_operator.gateway.lanes import DEFERRABLE, INTERACTIVE
from voxtral_operator.gateway.metrics import GatewayMetrics
from voxtral_operator.gateway.work import Work

CLIP = Work(audio_seconds=5, output_tokens=20)


@pytest.mark.parametrize(
    ("lane", "inflight", "slots", "interactive_waiting", "admitted"),
    [
        (INTERACTIVE, 15, 16, 0, True),
        (INTERACTIVE, 16, 16, 0, False),
        (DEFERRABLE, 13, 16, 0, True),  # headroom of 16 slots: 2
        (DEFERRABLE, 14, 16, 0, False),
        (DEFERRABLE, 0, 16, 1, False),  # an interactive request waits: never deferrable first
        (DEFERRABLE, 6, 8, 0, True),  # headroom at least 1
        (DEFERRABLE, 7, 8, 0, False),
        (DEFERRABLE, 0, 1, 0, False),  # one slot: it is the headroom
        (DEFERRABLE, 111, 128, 0, True),  # 128 slots: headroom 16
        (DEFERRABLE, 112, 128, 0, False),
    ],
)
def test_the_admission_rule(lane: str, inflight: int, slots: int, interactive_waiting: int, admitted: bool) -> None:
    assert lanes.admits(lane, inflight, slots, interactive_waiting) is admitted


@pytest.mark.parametrize(
    ("lane", "outstanding", "tokens", "kv_tokens", "admitted"),
    [
        (DEFERRABLE, 7000, 1000, 8000, True),  # the whole share: interactive work takes back what it needs
        (DEFERRABLE, 7001, 1000, 8000, False),
        (DEFERRABLE, 0, 50_000, 8000, True),  # nothing in flight: one request of any size
        (DEFERRABLE, 1, 50_000, 8000, False),
        (DEFERRABLE, 10**9, 10**9, 0, True),  # the KV cache's size unknown: slots alone
        (INTERACTIVE, 10**9, 10**9, 8000, True),  # interactive work may use the whole KV cache
    ],
)
def test_deferrable_work_stays_within_the_pods_share_of_the_kv_cache(
    lane: str, outstanding: int, tokens: int, kv_tokens: int, admitted: bool
) -> None:
    assert lanes.admits(lane, 0, 16, 0, outstanding, tokens, kv_tokens) is admitted


def test_a_requests_kv_tokens_are_its_audio_prompt_and_expected_output() -> None:
    # 60 s of audio at 12.5 tokens a second, the 64-token text prompt, 240 tokens of transcript.
    assert Work(audio_seconds=60, output_tokens=240).kv_tokens == 750 + 64 + 240
    assert Work(audio_seconds=0.01, output_tokens=0).kv_tokens == 1 + 64  # a started 80 ms takes a token


@pytest.mark.parametrize(
    ("body", "lane"),
    [
        ({"messages": []}, INTERACTIVE),
        ({"messages": [], "service_tier": "flex"}, DEFERRABLE),
        ({"messages": [], "service_tier": "auto"}, INTERACTIVE),
        ({"messages": [], "service_tier": "default"}, INTERACTIVE),
        ({"messages": [], "service_tier": None}, INTERACTIVE),
        ({"messages": [{"content": '"service_tier": "flex"'}]}, INTERACTIVE),  # inside a string: not a member
        ([1, 2], INTERACTIVE),  # not an object: the replica refuses it
    ],
)
def test_a_complete_json_body_names_its_lane(body: object, lane: str) -> None:
    tier = lanes.json_tier(json.dumps(body).encode(), complete=True)
    assert isinstance(tier, lanes.Tier)
    assert tier.lane == lane
    assert tier.watch == ()


@pytest.mark.parametrize("value", ["scale", "priority", "FLEX", 3, True, ["flex"]])
def test_an_unknown_tier_is_refused(value: object) -> None:
    tier = lanes.json_tier(json.dumps({"service_tier": value}).encode(), complete=True)
    assert isinstance(tier, Refusal), tier
    assert (tier.status, tier.code) == (400, "invalid_service_tier")


def test_a_long_json_body_is_read_from_its_prefix_and_watched_after() -> None:
    first = lanes.json_tier(b'{"service_tier": "flex", "messages": [{"content": "AAAA', complete=False)
    assert first == lanes.Tier(DEFERRABLE)
    unnamed = lanes.json_tier(b'{"messages": [{"content": "AAAA', complete=False)
    assert isinstance(unnamed, lanes.Tier)
    assert unnamed.lane == INTERACTIVE
    assert unnamed.watch == (b'"service_tier"',)
    twice = lanes.json_tier(b'{"service_tier": "flex", "service_tier": "default", "m": "AAA', complete=False)
    assert isinstance(twice, Refusal)
    assert twice.status == 400


def test_the_watch_finds_a_late_field_across_chunks() -> None:
    watch = lanes.LateFieldWatch((b'"service_tier"',))
    assert not watch.found(b"AAAA" * 100 + b'"serv')
    assert watch.found(b'ice_tier": "flex"}')
    assert not lanes.LateFieldWatch(()).found(b'"service_tier"')
    escaped = lanes.LateFieldWatch((b'"service_tier"',))
    assert not escaped.found(b'{"text": "say \\"service_tier\\" twice"}')  # a quoted word inside a string


def multipart(*fields: tuple[str, bytes], boundary: str = "XyZ") -> bytes:
    parts = b""
    for name, value in fields:
        filename = b'; filename="a.wav"' if name == "file" else b""
        parts += b"--" + boundary.encode() + b"\r\n"
        parts += b'Content-Disposition: form-data; name="' + name.encode() + b'"' + filename + b"\r\n\r\n"
        parts += value + b"\r\n"
    return parts + b"--" + boundary.encode() + b"--\r\n"


def test_a_multipart_body_names_its_lane_in_a_field() -> None:
    flex = multipart(("service_tier", b"flex"), ("file", b"RIFF...."), ("model", b"m"))
    assert lanes.multipart_tier(flex, "XyZ", complete=True) == lanes.Tier(DEFERRABLE)
    plain = multipart(("file", b"RIFF...."), ("model", b"m"))
    assert lanes.multipart_tier(plain, "XyZ", complete=True) == lanes.Tier(INTERACTIVE)
    # Longer than the prefix: a field after the file part would come too late, so the rest is watched.
    head = multipart(("model", b"m"), ("file", b"RIFF" + b"\x00" * 64))[:-20]
    tier = lanes.multipart_tier(head, "XyZ", complete=False)
    assert isinstance(tier, lanes.Tier)
    assert tier.lane == INTERACTIVE
    assert tier.watch == (b"service_tier",)
    unknown = lanes.multipart_tier(multipart(("service_tier", b"scale"), ("file", b"x")), "XyZ", complete=True)
    assert isinstance(unknown, Refusal)
    assert unknown.code == "invalid_service_tier"
    cut = multipart(("service_tier", b"flex"))[:-12]  # its value's end not read yet
    assert isinstance(lanes.multipart_tier(cut, "XyZ", complete=False), Refusal)


def test_the_priority_goes_first_and_a_callers_own_is_refused() -> None:
    rewritten = lanes.with_priority(b'  {"messages": [], "service_tier": "flex"}', complete=True, priority=10)
    assert isinstance(rewritten, lanes.Priority)
    assert json.loads(rewritten.prefix) == {"priority": 10, "messages": [], "service_tier": "flex"}
    assert (rewritten.watch, rewritten.closing) == ((), b"")
    empty = lanes.with_priority(b"{ }", complete=True, priority=10)
    assert isinstance(empty, lanes.Priority)
    assert json.loads(empty.prefix) == {"priority": 10}
    # Interactive work: vLLM's default 0, the body as it came.
    assert lanes.with_priority(b'{"messages": []}', complete=True, priority=0) == lanes.Priority(b'{"messages": []}')
    for own in (
        b'{"priority": -5, "service_tier": "flex"}',
        b'{"messages": [], "priorit\\u0079": -5}',  # the same member, spelt with an escape
    ):
        for priority in (10, 0):
            refused = lanes.with_priority(own, complete=True, priority=priority)
            assert isinstance(refused, Refusal), (own, priority)
            assert refused.code == "priority_not_allowed"
    # A word in the text is no member: the complete body is parsed to tell.
    text = lanes.with_priority(b'{"messages": [{"content": "\\"priority\\" \\u00e9"}]}', complete=True, priority=10)
    assert isinstance(text, lanes.Priority)
    not_json = lanes.with_priority(b'{"messages": [{"content": "\\u00e9"', complete=True, priority=0)
    assert isinstance(not_json, Refusal)
    assert not_json.code == "bad_request"
    # A body that streams: its prefix as it came, the rest watched, and the gateway's member last.
    partial = lanes.with_priority(b'{"service_tier": "flex", "messages": [{"content": "AAA', complete=False, priority=7)
    assert partial == lanes.Priority(
        b'{"service_tier": "flex", "messages": [{"content": "AAA', watch=(b'"priority"',), closing=b',"priority":7'
    )
    named = lanes.with_priority(b'{"priority": 1, "messages": [{"content": "AAA', complete=False, priority=0)
    assert isinstance(named, Refusal)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_the_gateways_member_goes_before_a_streamed_objects_final_brace(size: int) -> None:
    body = b'{"messages": [{"content": "x}"}], "priorit\\u0079": -5 }\r\n \n'
    closer = lanes.BeforeClosingBrace(b',"priority":0')
    sent = b"".join(closer.feed(body[i : i + size]) for i in range(0, len(body), size)) + closer.close()
    assert json.loads(sent) == {"messages": [{"content": "x}"}], "priority": 0}  # the last member wins
    assert sent.endswith(b',"priority":0}\r\n \n')
    # Not an object's end: unchanged, for the replica to refuse.
    closer = lanes.BeforeClosingBrace(b',"priority":0')
    assert closer.feed(b'{"a": [1') + closer.close() == b'{"a": [1'


async def test_deferrable_work_fills_only_what_interactive_work_leaves() -> None:
    dispatcher = Dispatcher(max_inflight=8, queue_timeout=5)
    dispatcher.set_replicas(["a:1"])
    deferred = [asyncio.create_task(dispatcher.acquire(CLIP, lane=DEFERRABLE)) for _ in range(10)]
    await asyncio.sleep(0.01)
    assert sum(t.done() for t in deferred) == 7  # 8 slots less a headroom of 1
    snapshot = dispatcher.snapshot()
    assert (snapshot.lanes[DEFERRABLE].inflight, snapshot.lanes[DEFERRABLE].queued) == (7, 3)
    # An interactive arrival starts at once, in the headroom.
    first = await asyncio.wait_for(dispatcher.acquire(CLIP), 0.5)
    # The replica is full now; the next interactive request waits, and it goes before the queued deferrable ones.
    second = asyncio.create_task(dispatcher.acquire(CLIP))
    await asyncio.sleep(0.01)
    running = [t.result() for t in deferred if t.done()]
    running[0].release()
    await asyncio.sleep(0.01)
    assert second.done()
    assert sum(t.done() for t in deferred) == 7
    # With no interactive request waiting, a deferrable one takes a slot only below the headroom again.
    first.release()
    await asyncio.sleep(0.01)
    assert sum(t.done() for t in deferred) == 7  # 7 in flight (6 deferrable + 1 interactive): at the limit
    second.result().release()
    await asyncio.sleep(0.01)
    assert sum(t.done() for t in deferred) == 8
    snapshot = dispatcher.snapshot()
    assert snapshot.lanes[DEFERRABLE].admitted == 8
    assert snapshot.lanes[INTERACTIVE].admitted == 2
    for task in deferred:
        task.cancel()
    await asyncio.gather(*deferred, return_exceptions=True)
    for lease in (t.result() for t in deferred if t.done() and not t.cancelled()):
        lease.release()


async def test_long_deferrable_work_leaves_the_kv_cache_to_interactive_work() -> None:
    # 1,800 s recordings: 23,000 KV tokens each with their prompts and transcripts. Slots alone would let 7 in.
    long = Work(audio_seconds=1800, output_tokens=436)
    dispatcher = Dispatcher(max_inflight=8, queue_timeout=5, kv_tokens_per_replica=80_000)
    dispatcher.set_replicas(["a:1", "b:1"])
    deferred = [asyncio.create_task(dispatcher.acquire(long, lane=DEFERRABLE)) for _ in range(8)]
    await asyncio.sleep(0.01)
    # 70,000 of each replica's 80,000 tokens: 3 such requests per replica (69,000), not 4 (92,000).
    assert sum(t.done() for t in deferred) == 6, [r.kv_tokens for r in dispatcher.replicas.values()]
    assert sorted(r.deferrable for r in dispatcher.replicas.values()) == [3, 3]
    # Interactive work is not bound by the KV estimate: it takes the rest at once.
    interactive = await asyncio.wait_for(dispatcher.acquire(long), 0.5)
    await asyncio.sleep(0.01)
    assert sum(t.done() for t in deferred) == 6
    # A deferrable request finishing beside the interactive one frees too little for the next: 69,000 with it.
    running = [t.result() for t in deferred if t.done()]
    next(r for r in running if r.address == interactive.address).release()
    await asyncio.sleep(0.01)
    assert sum(t.done() for t in deferred) == 6
    # One finishing on the other replica frees its tokens: the next one takes them.
    next(r for r in running if r.address != interactive.address).release()
    await asyncio.sleep(0.01)
    assert sum(t.done() for t in deferred) == 7
    interactive.release()
    for task in deferred:
        task.cancel()
    await asyncio.gather(*deferred, return_exceptions=True)
    for lease in (t.result() for t in deferred if t.done() and not t.cancelled()):
        lease.release()
    assert all(r.kv_tokens == 0 for r in dispatcher.replicas.values())


@pytest.mark.parametrize(
    ("outstanding", "kv_tokens", "retractable", "taken"),
    [
        (80_000, 80_000, [20_000, 20_000], []),  # fits: nothing taken back
        (80_001, 80_000, [20_000, 5_000], [1]),  # the newest first, and only as much as needed
        (100_000, 80_000, [20_000, 5_000, 10_000], [2, 1, 0]),
        (200_000, 80_000, [20_000], [0]),  # all there is, even when it is not enough
        (200_000, 80_000, [], []),
    ],
)
def test_an_interactive_request_takes_back_the_newest_deferrable_work_until_its_tokens_fit(
    outstanding: int, kv_tokens: int, retractable: list[int], taken: list[int]
) -> None:
    assert lanes.to_take_back(outstanding, kv_tokens, retractable) == taken


async def test_the_dispatcher_takes_back_only_retractable_deferrable_leases_on_the_interactive_requests_replica() -> (
    None
):
    long = Work(audio_seconds=1800, output_tokens=436)  # 23,000 KV tokens
    dispatcher = Dispatcher(max_inflight=8, kv_tokens_per_replica=80_000)
    dispatcher.set_replicas(["a:1"])
    leases = [await dispatcher.acquire(long, lane=DEFERRABLE) for _ in range(3)]  # 69,000 tokens
    aborted: list[int] = []
    for index in (0, 1):  # the third one's body was not kept: it cannot be sent again
        leases[index].retractable(lambda index=index: aborted.append(index))
    interactive = await dispatcher.acquire(long)  # 92,000 tokens with it: more than 80,000
    # The newest retractable one goes, and only it: 92,000 less its 23,000 fits.
    assert aborted == [1]
    assert [lease.taken_back for lease in leases] == [False, True, False]
    assert dispatcher.taken_back == 1
    assert dispatcher.snapshot().lanes[DEFERRABLE].taken_back == 1
    leases[1].release()
    # An answer on its way is never taken back: the lease settles when the replica answers.
    leases[0].settled()
    (await dispatcher.acquire(long)).release()
    assert aborted == [1]
    assert dispatcher.taken_back == 1
    for lease in (leases[0], leases[2], interactive):
        lease.release()
    assert dispatcher.replicas["a:1"].kv_tokens == 0
    assert not dispatcher.replicas["a:1"].retractable


async def test_an_interactive_request_goes_where_it_fits_rather_than_take_deferrable_work_back() -> None:
    long = Work(audio_seconds=1800, output_tokens=436)  # 23,000 KV tokens
    dispatcher = Dispatcher(max_inflight=8, kv_tokens_per_replica=80_000)
    dispatcher.set_replicas(["a:1"])
    leases = [await dispatcher.acquire(long, lane=DEFERRABLE) for _ in range(3)]  # 69,000 tokens on a
    aborted: list[Lease] = []
    for lease in leases:
        lease.retractable(lambda lease=lease: aborted.append(lease))
    dispatcher.set_replicas(["a:1", "b:1"])
    dispatcher.replicas["b:1"].outstanding = 10**6  # more work than a, by the estimate, but no KV tokens
    interactive = await dispatcher.acquire(long)
    assert interactive.address == "b:1"
    assert aborted == []
    interactive.release()
    dispatcher.set_replicas(["a:1"])  # no room elsewhere: a takes one back
    interactive = await dispatcher.acquire(long)
    assert interactive.address == "a:1"
    assert aborted == [leases[2]]
    for lease in (*leases, interactive):
        lease.release()


def _requests(text: str, tokens: int = 10_000) -> list[lanes.Unanswered]:
    """`text` one letter a request in dispatch order: d deferrable that can be sent again, k deferrable kept
    on the replica (its body not kept), i interactive."""
    return [lanes.Unanswered(letter in "dk", tokens, letter == "d") for letter in text]


@pytest.mark.parametrize(
    ("waiting", "unanswered", "taken"),
    [
        (0, "ddi", []),  # nothing waits: nothing taken back
        (1, "ddi", [1]),  # the interactive request may wait: the newest deferrable one before it covers it
        (2, "ddii", [1, 0]),  # two may: two deferrable ones' tokens for theirs
        (1, "ddid", []),  # this pod's newest request waits, a deferrable one: none of its interactive ones do
        (2, "ddid", [1]),  # the deferrable one after the interactive one is behind it in the queue: left
        (1, "kdki", [1]),  # only what can be sent again
        (1, "kki", []),
        (5, "di", [0]),  # more wait than this pod has requests there: all of its own are suspects
    ],
)
def test_a_read_of_vllms_waiting_count_takes_back_what_an_interactive_request_may_wait_behind(
    waiting: int, unanswered: str, taken: list[int]
) -> None:
    assert lanes.to_take_back_on_waiting(waiting, _requests(unanswered)) == taken


def test_a_read_takes_back_deferrable_tokens_until_they_cover_the_waiting_interactive_ones() -> None:
    requests = [*_requests("ddd", 4_000), *_requests("i", 10_000)]
    assert lanes.to_take_back_on_waiting(1, requests) == [2, 1, 0]
    requests = [*_requests("dd", 12_000), *_requests("i", 10_000)]
    assert lanes.to_take_back_on_waiting(1, requests) == [1]


async def test_the_dispatcher_takes_back_on_reads_only_when_told_to_and_not_when_a_request_is_sent() -> None:
    long = Work(audio_seconds=1800, output_tokens=436)  # 23,000 KV tokens
    for on_reads in (False, True):
        dispatcher = Dispatcher(max_inflight=8, kv_tokens_per_replica=50_000, take_back_on_reads=on_reads)
        dispatcher.set_replicas(["a:1"])
        aborted: list[int] = []
        leases = [await dispatcher.acquire(long, lane=DEFERRABLE) for _ in range(2)]  # 46,000 tokens
        for index, lease in enumerate(leases):
            lease.retractable(lambda index=index, aborted=aborted: aborted.append(index))
        assert dispatcher.to_read() == []  # no interactive request there: nothing to read
        interactive = await dispatcher.acquire(long)  # 69,000 with it: beyond the 50,000 share
        # Counting takes the newest one back at once; reading waits for vLLM to say a request waits.
        assert aborted == ([] if on_reads else [1])
        assert dispatcher.to_read() == (["a:1"] if on_reads else [])
        assert dispatcher.read_waiting("a:1", 0) == 0
        assert dispatcher.read_waiting("gone:1", 3) == 0
        assert dispatcher.read_waiting("a:1", 1) == (1 if on_reads else 0)
        assert aborted == [1]
        assert dispatcher.taken_back == 1
        interactive.settled()  # answered: nothing of it waits any more
        assert dispatcher.to_read() == []
        assert dispatcher.read_waiting("a:1", 1) == 0
        for lease in (*leases, interactive):
            lease.release()
        assert not dispatcher.replicas["a:1"].unanswered


async def test_the_deferrable_lane_has_its_own_bound_and_timeout() -> None:
    dispatcher = Dispatcher(max_inflight=2, queue_timeout=0.05, max_deferrable_queue=1, deferrable_timeout=0.3)
    dispatcher.set_replicas(["a:1"])
    running: Lease = await dispatcher.acquire(CLIP, lane=DEFERRABLE)
    waiting = asyncio.create_task(dispatcher.acquire(CLIP, lane=DEFERRABLE, key="k2"))
    await asyncio.sleep(0.01)
    with pytest.raises(QueueFull):
        await dispatcher.acquire(CLIP, lane=DEFERRABLE, key="k2")
    await asyncio.sleep(0.1)  # past the interactive queue timeout: the deferrable one still waits
    assert not waiting.done()
    with pytest.raises(QueueTimeout, match="deferrable"):
        await asyncio.wait_for(waiting, 1)
    snapshot = dispatcher.snapshot()
    assert snapshot.lanes[DEFERRABLE].failed == {"queue_full": 1, "queue_timeout": 1}
    assert snapshot.lanes[INTERACTIVE].failed == {}
    running.release()


async def test_a_deferrable_request_pushed_out_of_a_full_queue_is_one_failure() -> None:
    dispatcher = Dispatcher(max_inflight=1, max_deferrable_queue=2)
    dispatcher.set_replicas(["a:1"])
    running = await dispatcher.acquire(CLIP)
    burst = [asyncio.create_task(dispatcher.acquire(CLIP, lane=DEFERRABLE, key="k1")) for _ in range(2)]
    await asyncio.sleep(0.01)
    other = asyncio.create_task(dispatcher.acquire(CLIP, lane=DEFERRABLE, key="k2"))
    await asyncio.sleep(0.01)
    with pytest.raises(QueueFull):
        await burst[1]  # k1's newest made room for k2
    assert dispatcher.snapshot().lanes[DEFERRABLE].failed == {"queue_full": 1}
    for task in (burst[0], other):
        task.cancel()
    await asyncio.gather(burst[0], other, return_exceptions=True)
    running.release()


async def test_deferrable_work_waits_at_zero_replicas_for_its_own_timeout() -> None:
    dispatcher = Dispatcher(max_inflight=8, hold_timeout=0.05, deferrable_timeout=5)
    held = asyncio.create_task(dispatcher.acquire(CLIP, lane=DEFERRABLE))
    await asyncio.sleep(0.15)
    assert not held.done()
    dispatcher.set_replicas(["a:1"])
    lease = await asyncio.wait_for(held, 1)
    assert lease.lane == DEFERRABLE
    lease.release()


async def test_the_lanes_page_reads_back_as_the_autoscaler_parses_it() -> None:
    dispatcher = Dispatcher(max_inflight=8)
    dispatcher.set_replicas(["a:1"])
    leases = [await dispatcher.acquire(Work(audio_seconds=60, output_tokens=0), lane=DEFERRABLE) for _ in range(7)]
    queued = asyncio.create_task(dispatcher.acquire(Work(audio_seconds=30, output_tokens=0), lane=DEFERRABLE))
    interactive = await dispatcher.acquire(CLIP)
    await asyncio.sleep(0.01)
    page = generate_latest(GatewayMetrics(dispatcher.snapshot).registry).decode()
    parsed = parse_gateway_metrics(page)
    assert parsed is not None, page
    assert parsed.lanes[DEFERRABLE] == LanePage(
        queued=1, queued_audio_seconds=30, in_flight=7, in_flight_audio_seconds=420
    )
    assert parsed.lanes[INTERACTIVE] == LanePage(
        queued=0, queued_audio_seconds=0, in_flight=1, in_flight_audio_seconds=5
    )
    assert parsed.queued == 1  # the total counts both lanes, as before
    # What the policy reads of two such pods: the interactive queue, the deferrable lane apart.
    sample = gateway_sample([parsed, parsed], seconds_since_last_request=3.0)
    assert (sample.queued_requests, sample.queued_audio_seconds) == (0, 0)
    assert (sample.deferrable_queued_requests, sample.deferrable_in_flight_audio_seconds) == (2, 840)
    assert sample.deferrable_in_flight_requests == 14  # taken off vLLM's waiting count by the policy
    assert sample.interactive_share == pytest.approx(10 / 850)
    assert lanes_status([parsed])[DEFERRABLE] == {"queuedRequests": 1, "queuedAudioSeconds": 30, "inFlightRequests": 7}
    # Steady interactive traffic writes no status: its in-flight count is left to the metrics.
    assert lanes_status([parsed])[INTERACTIVE] == {"queuedRequests": 0, "queuedAudioSeconds": 0}
    queued.cancel()
    for lease in [*leases, interactive]:
        lease.release()


def test_realtime_handshakes_held_at_zero_count_in_the_queue_the_policy_reads() -> None:
    """They are in the page's total and in no lane: the policy's queue is the total less the deferrable lane."""
    lane = LanePage(queued=0, queued_audio_seconds=0, in_flight=0, in_flight_audio_seconds=0)
    page = GatewayPage(
        queued=2,  # two handshakes held, no replica
        queued_audio_seconds=0,
        in_flight_audio_seconds=0,
        work_requests=0,
        lanes={INTERACTIVE: lane, DEFERRABLE: lane},
    )
    assert gateway_sample([page], seconds_since_last_request=1.0).queued_requests == 2


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"])
def test_a_json_body_not_in_utf8_is_refused(encoding: str) -> None:
    # Python's json.loads (so vLLM) reads these too, but the gateway's search for service_tier and priority
    # is in UTF-8 bytes: a caller's own priority would pass it.
    body = json.dumps({"messages": [], "priority": -100}).encode(encoding)
    json.loads(body)  # what a replica would read
    refused = lanes.utf8_json(body)
    assert isinstance(refused, Refusal), (encoding, body[:8])
    assert (refused.status, refused.code) == (400, "json_not_utf8")
    for utf8 in (b'{"priority": -100}', b" \r\n{}", b"\xef\xbb\xbf{}", b"{", b""):
        assert lanes.utf8_json(utf8) is None, utf8


@pytest.mark.parametrize(
    "disposition",
    [b'form-data; name="service_tier"', b"form-data; name=service_tier", b'form-data; NAME="service_tier"',
     b'Form-Data ; Name = "service_tier"'],
)  # fmt: skip
def test_a_multipart_tier_field_is_read_however_its_part_spells_it(disposition: bytes) -> None:
    # aiohttp and python-multipart (vLLM's) read parameter names in any case and token values unquoted.
    body = b"--XyZ\r\ncontent-disposition: " + disposition + b"\r\n\r\nflex\r\n" + multipart(("file", b"RIFF"))
    assert lanes.multipart_tier(body, "XyZ", complete=True) == lanes.Tier(DEFERRABLE), disposition


@pytest.mark.parametrize(
    "disposition",
    [b'form-data; name="service_tier"; name="model"', b"form-data; name*=UTF-8''service_tier",
     b'form-data; name="service_tier', b"form-data; name=\"service_\xc3\xa9\""],
)  # fmt: skip
def test_a_multipart_part_whose_name_could_be_read_two_ways_is_refused(disposition: bytes) -> None:
    body = b"--XyZ\r\nContent-Disposition: " + disposition + b"\r\n\r\nflex\r\n" + multipart(("file", b"RIFF"))
    refused = lanes.multipart_tier(body, "XyZ", complete=True)
    assert isinstance(refused, Refusal), (disposition, refused)
    assert refused.status == 400
