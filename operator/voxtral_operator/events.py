"""Events on endpoints from `voxtral-operator`, as Kubernetes' own recorder posts them.

events.k8s.io/v1 Events with the operator as reportingController, the replica's pod as
reportingInstance, a real action (Create, Update, Scale, Validate, Apply, Reconcile), the endpoint
as `regarding`, and the message as `note`. A repeat of the same event is folded into the first
one's `series` (count, lastObservedTime) rather than posted again, as client-go's recorder does:
the second occurrence patches the series at once, later ones at most every REFRESH_SECONDS, and
an event not seen for SERIES_GAP_SECONDS starts afresh. Nothing is written unless something
happened: a steady endpoint costs no event writes.

Writes go through WRITERS background tasks, a series' writes in order; `record` never blocks the
reconciler. A series whose namespace or object is gone is dropped, never retried: a create answered
404 (the namespace is gone) or refused because the namespace is terminating drops every series of
that namespace, a patch answered 404 drops its series, and the operator forgets the series of an
endpoint it saw deleted. Any other failure (the API server restarting, 429, 5xx) is retried after
RETRY_DELAYS, so a late Event lands within seconds of the API server's return, not a refresh later,
and dropped after MAX_WRITE_ATTEMPTS. A create that was retried or waited longer than STALE_SECONDS
is made only if the endpoint still exists with the same uid, so a namespace or endpoint recreated
under the same name never receives the Events of its predecessor.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from voxtral_operator.k8s.client import ApiClient, ApiError
from voxtral_operator.k8s.resources import ENDPOINTS, Resource

logger = logging.getLogger(__name__)

JSON = dict[str, Any]

EVENTS = Resource("events.k8s.io", "v1", "events", "Event")
REPORTING_CONTROLLER = "voxtral.dev/voxtral-operator"
# Limits the API server enforces on events.k8s.io/v1 Events.
NOTE_LIMIT_BYTES = 1024
FIELD_LIMIT = 128

# A repeating event's count is written at most this often; short, so that the last count of a burst
# lands seconds after it, not a minute after everything else has settled.
REFRESH_SECONDS = 10.0
SERIES_GAP_SECONDS = 360.0  # client-go's: a pause this long ends a series
MAX_SERIES = 4096  # events remembered for folding repeats (oldest forgotten first)
QUEUE_LIMIT = 1000  # writes waiting; beyond this, events are logged and dropped
# Writes made at once. One at a time, the Created events of a thousand endpoints took minutes to land
# (each a round trip, most also a look at the endpoint), long after everything else had settled.
WRITERS = 8
CLOSE_SECONDS = 2.0  # on shutdown, queued writes get this long (a write normally takes milliseconds)
RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0)  # seconds before each retry of a failed write (the client retries within each)
MAX_WRITE_ATTEMPTS = len(RETRY_DELAYS) + 1  # a series whose write failed this often is dropped
# A create later than this after the event first checks the endpoint's uid: a namespace deleted and made
# again takes seconds, and an Event queued behind a busy minute must not land in the successor.
STALE_SECONDS = 1.0

# What the operator did, by the reason it reports (anything else: it was reconciling).
ACTIONS = {
    "Created": "Create",
    "Updated": "Update",
    "Deleted": "Delete",
    "Scaled": "Scale",
    "ScaledReplicasUp": "Scale",
    "ScaledReplicasDown": "Scale",
    "ScalingLimited": "Scale",
    "InvalidSpec": "Validate",
    "NameConflict": "Apply",
    "ApplyRejected": "Apply",
}
DEFAULT_ACTION = "Reconcile"


def action_for(reason: str) -> str:
    return ACTIONS.get(reason, DEFAULT_ACTION)


def reporting_instance() -> str:
    """The operator replica: its pod's name (the chart sets POD_NAME; a pod's hostname is its name)."""
    return (os.environ.get("POD_NAME") or socket.gethostname())[:FIELD_LIMIT]


def micro_time(moment: datetime.datetime) -> str:
    """Kubernetes' MicroTime: RFC 3339 with microseconds, in UTC."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def truncate_bytes(text: str, limit: int) -> str:
    """At most `limit` bytes of UTF-8, never cutting a character in two."""
    data = text.encode()
    return text if len(data) <= limit else data[:limit].decode(errors="ignore")


def regarding_of(obj: Mapping[str, Any]) -> JSON:
    meta = obj.get("metadata") or {}
    ref = {
        "apiVersion": obj.get("apiVersion"),
        "kind": obj.get("kind"),
        "namespace": meta.get("namespace"),
        "name": meta.get("name"),
        "uid": meta.get("uid"),
    }
    return {k: v for k, v in ref.items() if v}


def event_body(
    *,
    name: str,
    regarding: JSON,
    type_: str,
    reason: str,
    action: str,
    note: str,
    instance: str,
    now: datetime.datetime,
) -> JSON:
    return {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": regarding.get("namespace") or "default"},
        "eventTime": micro_time(now),
        "reportingController": REPORTING_CONTROLLER,
        "reportingInstance": instance,
        "action": action[:FIELD_LIMIT],
        "reason": reason[:FIELD_LIMIT],
        "type": type_,
        "note": truncate_bytes(note, NOTE_LIMIT_BYTES),
        "regarding": regarding,
    }


@dataclass
class Series:
    """One Event object and the repeats folded into it."""

    body: JSON
    count: int = 1
    written_count: int = 0  # the count the API has (0: not created yet)
    last_observed: float = 0.0  # monotonic
    last_observed_at: datetime.datetime = field(default_factory=lambda: datetime.datetime.now(tz=datetime.UTC))
    last_write: float = float("-inf")  # monotonic, when a write was queued
    first_observed: float = 0.0  # monotonic
    failed_writes: int = 0
    dropped: bool = False  # its namespace or object is gone, or it failed too often: never written again
    writing: asyncio.Lock = field(default_factory=asyncio.Lock)  # a series' writes one at a time, in order
    queued: bool = False  # waiting in the queue: its write will carry every count recorded until then

    @property
    def dirty(self) -> bool:
        return self.count > self.written_count


def write_due(series: Series, now: float, refresh_seconds: float = REFRESH_SECONDS) -> bool:
    """Should the series be written now? First sight (create), the first repeat, or a count that is
    REFRESH_SECONDS old. Pure, so the "no writes when nothing happens" rule is tested as a table."""
    if not series.dirty or series.dropped:
        return False
    if series.written_count == 0 or series.count == 2:
        return True
    return now - series.last_write >= refresh_seconds


SeriesKey = tuple[str, str, str, str, str, str]


@dataclass
class EventRecorder:
    client: ApiClient
    instance: str = field(default_factory=reporting_instance)
    clock: Callable[[], float] = time.monotonic
    refresh_seconds: float = REFRESH_SECONDS
    retry_delays: tuple[float, ...] = RETRY_DELAYS
    series_gap_seconds: float = SERIES_GAP_SECONDS
    _series: OrderedDict[SeriesKey, Series] = field(default_factory=OrderedDict)
    _queue: asyncio.Queue[Series] | None = None
    writers: int = WRITERS
    _workers: list[asyncio.Task[None]] = field(default_factory=list)
    _warned: set[int] = field(default_factory=set)

    def record(self, obj: Mapping[str, Any], type_: str, reason: str, note: str, action: str | None = None) -> None:
        """Note that the event happened; the write (if one is due) is made in the background."""
        regarding = regarding_of(obj)
        action = action or action_for(reason)
        key: SeriesKey = (
            str(regarding.get("namespace")),
            str(regarding.get("uid") or regarding.get("name")),
            type_,
            reason,
            action,
            note,
        )
        now = self.clock()
        series = self._series.get(key)
        if series is not None and now - series.last_observed > self.series_gap_seconds:
            series = None  # a new occurrence after a long pause is a new event
        if series is None:
            moment = datetime.datetime.now(tz=datetime.UTC)
            name = f"{regarding.get('name', 'object')}.{time.time_ns():x}"
            body = event_body(
                name=name,
                regarding=regarding,
                type_=type_,
                reason=reason,
                action=action,
                note=note,
                instance=self.instance,
                now=moment,
            )
            series = Series(body=body, last_observed=now, last_observed_at=moment, first_observed=now)
        else:
            series.count += 1
            series.last_observed = now
            series.last_observed_at = datetime.datetime.now(tz=datetime.UTC)
        self._series[key] = series
        self._series.move_to_end(key)
        while len(self._series) > MAX_SERIES:
            self._series.popitem(last=False)
        if write_due(series, now, self.refresh_seconds):
            self._enqueue(series, now)

    def _enqueue(self, series: Series, now: float) -> None:
        if self._queue is None:
            self._queue = asyncio.Queue(QUEUE_LIMIT)
            loop = asyncio.get_running_loop()
            self._workers = [
                loop.create_task(self._run(flushes=index == 0), name=f"event writer {index}")
                for index in range(self.writers)
            ]
        series.last_write = now
        if series.queued:
            return
        try:
            self._queue.put_nowait(series)
            series.queued = True
        except asyncio.QueueFull:
            logger.warning("event not posted (too many waiting): %s %s", series.body["reason"], series.body["note"])

    def flush_due(self) -> None:
        """Write the counts of series that repeated since their last write, once REFRESH_SECONDS passed."""
        now = self.clock()
        for key, series in list(self._series.items()):
            if write_due(series, now, self.refresh_seconds):
                self._enqueue(series, now)
            elif not series.dirty and now - series.last_observed > self.series_gap_seconds:
                del self._series[key]  # ended and written: forget it

    async def _run(self, flushes: bool) -> None:
        """One writer; the one that `flushes` also queues the counts left unwritten once they are due."""
        assert self._queue is not None
        last_flush = self.clock()
        while True:
            try:
                series = await asyncio.wait_for(self._queue.get(), timeout=self.refresh_seconds)
            except TimeoutError:
                series = None
            if series is not None:
                series.queued = False
                try:
                    async with series.writing:
                        await self._write(series)
                except Exception as exc:  # events are best effort: never let one stop the others
                    self._failed(series, exc)
                finally:
                    self._queue.task_done()
            if flushes and self.clock() - last_flush >= self.refresh_seconds:  # counts left unwritten are due now
                last_flush = self.clock()
                self.flush_due()

    async def _write(self, series: Series) -> None:
        count = series.count
        if series.dropped or count <= series.written_count:
            return  # dropped, or an earlier queued write already carried this count
        meta = series.body["metadata"]
        if series.written_count == 0:
            if (series.failed_writes or self.clock() - series.first_observed > STALE_SECONDS) and not (
                await self._regarding_exists(series.body["regarding"])
            ):
                self._drop(lambda other: other is series)
                return
            try:
                await self.client.create(EVENTS, meta["namespace"], series.body)
            except ApiError as exc:
                if exc.status != 409:  # 409: a retried create that had already been made
                    raise
            # Repeats seen while the create was queued are written by the next due write.
            series.written_count = 1
            if count > 1:
                await self._patch_series(series, count)
            return
        await self._patch_series(series, count)

    async def _regarding_exists(self, regarding: JSON) -> bool:
        """Is the endpoint the event is about still there, the same object (uid)? Other kinds: assumed so."""
        if regarding.get("kind") != ENDPOINTS.kind or regarding.get("apiVersion") != ENDPOINTS.api_version:
            return True
        live = await self.client.get(ENDPOINTS, regarding.get("namespace"), str(regarding.get("name")))
        return live is not None and (live.get("metadata") or {}).get("uid") == regarding.get("uid")

    async def _patch_series(self, series: Series, count: int) -> None:
        meta = series.body["metadata"]
        patch = {"series": {"count": count, "lastObservedTime": micro_time(series.last_observed_at)}}
        await self.client.request(
            "PATCH",
            EVENTS.path(meta["namespace"], meta["name"]),
            body=patch,
            content_type="application/merge-patch+json",
        )
        series.written_count = count

    def _failed(self, series: Series, exc: Exception) -> None:
        """Drop what can never be written; give up on the rest after MAX_WRITE_ATTEMPTS."""
        self._warn_once(exc)
        namespace = series.body["metadata"]["namespace"]
        status = exc.status if isinstance(exc, ApiError) else -1
        terminating = status == 403 and "being terminated" in (exc.message if isinstance(exc, ApiError) else "")
        if (status == 404 and series.written_count == 0) or terminating:
            # An Event create answers 404 only when its namespace is gone: so is every series in it.
            dropped = self._drop(lambda other: other.body["metadata"]["namespace"] == namespace)
            logger.info("namespace %s is gone or terminating: %d event series dropped", namespace, dropped)
            return
        series.failed_writes += 1
        if status == 404 or series.failed_writes > len(self.retry_delays):  # 404: the Event itself is gone
            self._drop(lambda other: other is series)
            logger.info("event dropped after %d failed writes: %s %s", series.failed_writes, series.body["reason"], exc)
            return
        delay = self.retry_delays[series.failed_writes - 1]
        asyncio.get_running_loop().call_later(delay, self._retry, series)

    def _retry(self, series: Series) -> None:
        if series.dirty and not series.dropped:
            self._enqueue(series, self.clock())

    def _drop(self, which: Callable[[Series], bool]) -> int:
        """Never write these series again and forget them (a queued write of one is skipped)."""
        keys = [key for key, series in self._series.items() if which(series)]
        for key in keys:
            self._series.pop(key).dropped = True
        return len(keys)

    def forget(self, namespace: str, uid: str | None = None) -> None:
        """The endpoint `uid` (None: the whole namespace) is gone: its unwritten events are dropped."""
        self._drop(
            lambda series: (
                series.body["metadata"]["namespace"] == namespace
                and (uid is None or series.body["regarding"].get("uid") == uid)
            )
        )

    def _warn_once(self, exc: Exception) -> None:
        status = exc.status if isinstance(exc, ApiError) else -1
        if status not in self._warned:
            self._warned.add(status)
            hint = (
                " (does the operator's ClusterRole allow events.k8s.io events create/patch?)" if status == 403 else ""
            )
            logger.warning("posting an Event failed: %s%s", exc, hint)

    async def drain(self) -> None:
        """Wait until every queued write is made (tests, shutdown)."""
        if self._queue is not None:
            await self._queue.join()

    async def close(self, grace_seconds: float = CLOSE_SECONDS) -> None:
        """Shutting down: the queued writes are made, for at most `grace_seconds`, then the writers stop.
        Left running, they would hold the operator's exit for kopf's 5 s wait on tasks it did not start."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace_seconds):
                await self.drain()
        workers, self._workers, self._queue = self._workers, [], None
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)


_recorders: dict[int, EventRecorder] = {}


def post(client: ApiClient, obj: Mapping[str, Any], type_: str, reason: str, note: str) -> None:
    """Record an event about obj through the operator's API client (one recorder per client)."""
    recorder = _recorders.get(id(client))
    if recorder is None or recorder.client is not client:
        recorder = _recorders[id(client)] = EventRecorder(client)
    try:
        recorder.record(obj, type_, reason, note)
    except RuntimeError:  # no running event loop: nothing can be posted, so say it in the log
        logger.info("event %s %s: %s", type_, reason, note)


async def close(client: ApiClient) -> None:
    """The operator is stopping: make the writes queued through `client` and stop its writers."""
    recorder = _recorders.pop(id(client), None)
    if recorder is not None and recorder.client is client:
        await recorder.close()


def forget(client: ApiClient, namespace: str, uid: str | None = None) -> None:
    """The endpoint `uid` in namespace (None: the namespace itself) was deleted: drop its unwritten events."""
    recorder = _recorders.get(id(client))
    if recorder is not None and recorder.client is client:
        recorder.forget(namespace, uid)
