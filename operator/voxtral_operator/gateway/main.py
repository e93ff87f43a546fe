"""`voxtral-operator gateway`: check the flags, log in, watch the sources, serve until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import signal
import sys
from pathlib import Path

from voxtral_operator import logs
from voxtral_operator.gateway.app import Gateway, Settings, serve_api, serve_metrics
from voxtral_operator.gateway.connections import Limits
from voxtral_operator.gateway.dispatch import Dispatcher
from voxtral_operator.gateway.kube import SERVICE_ACCOUNT_TOKEN, KubeReader
from voxtral_operator.gateway.limits import KeyLimits, KeyPolicies, parse_override
from voxtral_operator.gateway.realtime import RealtimeSettings
from voxtral_operator.gateway.sources import SecretRef, Sources, Spec, watch_sources
from voxtral_operator.k8s.client import Connection

logger = logging.getLogger("voxtral_operator.gateway")

EXIT_USAGE = 2
EXIT_FAILED = 1
SHUTDOWN_SECONDS = 60.0  # in-flight requests get this long after SIGTERM
# Queued requests may still reach a replica this long after SIGTERM (and then finish within the
# shutdown); held ones, with no replica to wait for, get 503 at once rather than a reset at the end.
STOP_QUEUED_GRACE_SECONDS = 20.0


class UsageError(Exception):
    pass


def spec_of(args: argparse.Namespace) -> Spec:
    """The watched objects from the flags; a malformed value raises UsageError."""
    try:
        backend_key = SecretRef.parse(args.backend_key_secret, key_required=True) if args.backend_key_secret else None
        caller_keys = tuple(SecretRef.parse(text) for text in args.caller_keys_secret or [])
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    for name, value in (
        ("--max-inflight-per-replica", args.max_inflight_per_replica),
        ("--max-queue", args.max_queue),
        ("--queue-timeout-seconds", args.queue_timeout_seconds),
        ("--hold-timeout-seconds", args.hold_timeout_seconds),
        ("--max-deferrable-queue", args.max_deferrable_queue),
        ("--deferrable-timeout-seconds", args.deferrable_timeout_seconds),
        ("--max-upload-mb", args.max_upload_mb),
        ("--max-connections", args.max_connections),
        ("--idle-timeout-seconds", args.idle_timeout_seconds),
        ("--header-timeout-seconds", args.header_timeout_seconds),
        ("--body-timeout-seconds", args.body_timeout_seconds),
        ("--realtime-max-session-seconds", args.realtime_max_session_seconds),
        ("--realtime-idle-seconds", args.realtime_idle_seconds),
        ("--realtime-messages-per-second", args.realtime_messages_per_second),
        ("--realtime-slow-reader-seconds", args.realtime_slow_reader_seconds),
        ("--realtime-max-frame-bytes", args.realtime_max_frame_bytes),
    ):
        if not (math.isfinite(value) and value > 0):  # NaN passes every comparison
            raise UsageError(f"{name} must be a positive number, not {value:g}")
    for name, size in (("--json-buffer-mb", args.json_buffer_mb), ("--resend-buffer-mb", args.resend_buffer_mb)):
        if not (math.isfinite(size) and size >= 0):
            raise UsageError(f"{name} must be 0 or more, not {size:g}")
    if not (math.isfinite(args.take_back_read_seconds) and args.take_back_read_seconds >= 0):
        raise UsageError(f"--take-back-read-seconds must be 0 or more seconds, not {args.take_back_read_seconds:g}")
    if args.kv_cache_tokens_per_replica < 0:
        raise UsageError(f"--kv-cache-tokens-per-replica must not be negative, not {args.kv_cache_tokens_per_replica}")
    if args.deferrable_priority is not None and args.deferrable_priority <= 0:
        raise UsageError(f"--deferrable-priority must be above interactive requests' 0, not {args.deferrable_priority}")
    for name, port in (("--port", args.port), ("--metrics-port", args.metrics_port)):
        if not 0 <= port <= 65535:
            raise UsageError(f"{name} {port}: not a TCP port")
    if not args.namespace or not args.endpoint or not args.backend_service:
        raise UsageError("--namespace, --endpoint and --backend-service must not be empty")
    return Spec(
        namespace=args.namespace,
        backend_service=args.backend_service,
        endpoint=args.endpoint,
        backend_key=backend_key,
        caller_keys=caller_keys,
        tls_secret=args.tls_secret or None,
        secrets_dir=Path(args.secrets_dir),
    )


def realtime_settings(args: argparse.Namespace) -> RealtimeSettings | None:
    """The realtime route's bounds from the flags; None when the endpoint serves no realtime model."""
    if args.realtime_sessions_per_replica <= 0:
        return None
    return RealtimeSettings(
        sessions_per_replica=args.realtime_sessions_per_replica,
        max_session_seconds=args.realtime_max_session_seconds,
        idle_seconds=args.realtime_idle_seconds,
        drain_seconds=args.realtime_drain_seconds,
        max_frame_bytes=args.realtime_max_frame_bytes,
        messages_per_second=args.realtime_messages_per_second,
        full_wait_seconds=args.realtime_full_wait_seconds,
        slow_reader_seconds=args.realtime_slow_reader_seconds,
    )


def key_policies_of(args: argparse.Namespace) -> KeyPolicies:
    """Every key's limits and the overrides by Secret entry name, from the flags; UsageError when malformed."""
    for name, value in (
        ("--key-requests-per-minute", args.key_requests_per_minute),
        ("--key-audio-seconds-per-minute", args.key_audio_seconds_per_minute),
        ("--key-concurrent-requests", args.key_concurrent_requests),
    ):
        if value is not None and not 0 < value < float("inf"):
            raise UsageError(f"{name} must be positive, not {value:g}")
    default = KeyLimits(
        requests_per_minute=args.key_requests_per_minute,
        audio_seconds_per_minute=args.key_audio_seconds_per_minute,
        concurrent_requests=args.key_concurrent_requests,
    )
    try:
        overrides = dict(parse_override(text, default) for text in args.key_override)
    except ValueError as exc:
        raise UsageError(f"--key-override {exc}") from None
    return KeyPolicies(default, overrides)


def login() -> tuple[Connection, bool]:
    """Credentials from KUBECONFIG when set, else the pod's service account; (connection, in-cluster)."""
    import kopf

    settings = kopf.OperatorSettings()
    kubeconfig = os.environ.get("KUBECONFIG")
    try:
        if kubeconfig:
            info = kopf.login_with_kubeconfig(settings=settings)
        else:
            info = kopf.login_with_service_account(settings=settings)
    except Exception as exc:
        raise UsageError(f"no Kubernetes credentials: kubeconfig {kubeconfig}: {exc}") from None
    if info is None:
        where = f"kubeconfig {kubeconfig} names no usable cluster" if kubeconfig else "no service account token"
        raise UsageError(f"no Kubernetes credentials: {where}. Set KUBECONFIG, or run in a pod with a service account")
    return Connection.from_kopf(info), not kubeconfig


def run_gateway(args: argparse.Namespace) -> int:
    try:
        spec = spec_of(args)
        key_policies_of(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        connection, in_cluster = login()
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    logs.configure(args.log_format, verbose=args.verbose)
    logs.bind_endpoint((args.namespace, args.endpoint))
    reader = KubeReader(connection, SERVICE_ACCOUNT_TOKEN if in_cluster else None)
    asyncio.run(_serve(args, spec, reader))
    return 0


async def _serve(args: argparse.Namespace, spec: Spec, reader: KubeReader) -> None:
    logs.bind_endpoint((args.namespace, args.endpoint))
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    sources = Sources()
    dispatcher = Dispatcher(
        max_inflight=args.max_inflight_per_replica,
        max_queue=args.max_queue,
        queue_timeout=args.queue_timeout_seconds,
        hold_timeout=args.hold_timeout_seconds,
        max_deferrable_queue=args.max_deferrable_queue,
        deferrable_timeout=args.deferrable_timeout_seconds,
        kv_tokens_per_replica=args.kv_cache_tokens_per_replica,
        take_back_on_reads=args.take_back_read_seconds > 0,
        key_policies=key_policies_of(args),
    )
    gateway = Gateway(
        sources,
        dispatcher,
        Settings(
            max_upload_bytes=int(args.max_upload_mb * 1_000_000),
            json_buffer_bytes=int(args.json_buffer_mb * 1_000_000),
            resend_buffer_bytes=int(args.resend_buffer_mb * 1_000_000),
            body_timeout=args.body_timeout_seconds,
            limits=Limits(
                max_connections=args.max_connections,
                idle_timeout=args.idle_timeout_seconds,
                header_timeout=args.header_timeout_seconds,
            ),
            realtime=realtime_settings(args),
            deferrable_priority=args.deferrable_priority,
        ),
    )
    watching = asyncio.create_task(watch_sources(reader, spec, sources))
    background = [watching]
    if args.take_back_read_seconds > 0:
        background.append(asyncio.create_task(gateway.take_back_on_reads(args.take_back_read_seconds)))
    metrics_runner, metrics_port = await serve_metrics(gateway, args.host, args.metrics_port)
    api_runner = None
    try:
        if spec.tls_secret and gateway.ssl_context is None:
            logger.info("waiting for the TLS Secret %s/%s", spec.namespace, spec.tls_secret)
            have_tls = asyncio.Event()
            sources.on_tls.append(lambda _: have_tls.set() if gateway.ssl_context is not None else None)
            waits = [asyncio.ensure_future(event.wait()) for event in (have_tls, stopping)]
            await asyncio.wait([*waits, watching], return_when="FIRST_COMPLETED")
            for waiting in waits:
                waiting.cancel()
        if not stopping.is_set() and not watching.done():
            api_runner, port = await serve_api(gateway, args.host, args.port, SHUTDOWN_SECONDS)
            logger.info(
                "gateway for %s/%s serving %s on %s:%d (metrics on port %d), backends from Service %s%s",
                args.namespace,
                args.endpoint,
                "HTTPS" if gateway.ssl_context else "HTTP",
                args.host,
                port,
                metrics_port,
                spec.backend_service,
                " (suspended)" if sources.settings.suspended else "",
            )
            until_stopped = asyncio.ensure_future(stopping.wait())
            await asyncio.wait([until_stopped, watching], return_when="FIRST_COMPLETED")
            until_stopped.cancel()
        if watching.done():
            watching.result()  # the watches never end on their own: raise what ended them
        logger.info("stopping: no new connections; waiting for in-flight requests")
        gateway.stop(queued_grace=STOP_QUEUED_GRACE_SECONDS)
    finally:
        if api_runner is not None:
            await api_runner.cleanup()
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await metrics_runner.cleanup()
        await gateway.close()
        await reader.close()
