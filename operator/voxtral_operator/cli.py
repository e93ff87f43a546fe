"""`voxtral-operator`: render, hardware, crd, rbac, run, gateway.

A user's mistake (a missing file, a bad spec, a config key typo, no cluster credentials) ends
in one message on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.parse
from collections.abc import Sequence
from importlib import metadata
from typing import Any

import yaml

from voxtral_operator.api.resolve import InvalidSpec
from voxtral_operator.gateway import SECRETS_DIR
from voxtral_operator.inputs import InputError, load_manifests, read_config
from voxtral_operator.logs import LOG_FORMATS

EXIT_USAGE = 2  # bad input or options, as argparse exits
EXIT_FAILED = 1  # the environment is not what the command needs (no cluster credentials)
EXIT_INTERNAL = 70  # a bug (BSD sysexits EX_SOFTWARE)
DEBUG_ENV = "VOXTRAL_OPERATOR_DEBUG"


def _describe(body: dict[str, Any]) -> str:
    """How an object is named in messages, whatever shape its metadata has."""
    kind = body.get("kind") if isinstance(body.get("kind"), str) else "object"
    meta = body.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    return f"{kind} {name}" if isinstance(name, str) and name else f"{kind} (unnamed)"


def _cmd_render(args: argparse.Namespace) -> int:
    from voxtral_operator.render import render

    config = read_config(args.config)
    rendered: list[dict[str, Any]] = []
    failed = False
    for document in load_manifests(args.filename):
        try:
            rendered += render(document.body, config)
        except InvalidSpec as exc:
            failed = True
            for problem in exc.problems:
                print(f"error: {document.where}: {_describe(document.body)}: {problem}", file=sys.stderr)
    if failed:
        return EXIT_USAGE
    sys.stdout.write(yaml.safe_dump_all(rendered, sort_keys=False, width=120))
    return 0


def _cmd_hardware(args: argparse.Namespace) -> int:
    from voxtral_operator.hardware import run_hardware

    return run_hardware(args, read_config(args.config))


def _cmd_crd(_: argparse.Namespace) -> int:
    from voxtral_operator.api.crd import crd_yaml

    sys.stdout.write(crd_yaml())
    return 0


def _cmd_rbac(_: argparse.Namespace) -> int:
    from voxtral_operator.rbac import clusterrole_template

    sys.stdout.write(clusterrole_template())
    return 0


def _port(text: str) -> int:
    """A TCP port for argparse: 0 (off) to 65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (0-65535)")
    return port


def _liveness_problem(liveness: str, metrics_port: int) -> str | None:
    """Why kopf could not serve its liveness probe at this URL ('' is off); None when it could."""
    if not liveness:
        return None
    parts = urllib.parse.urlsplit(liveness)
    try:
        port = parts.port
    except ValueError:
        return f"--liveness {liveness!r}: its port is not a port (1-65535)"
    if parts.scheme != "http" or not parts.hostname or not port:
        return f"--liveness {liveness!r}: expected http://HOST:PORT/PATH ('' turns it off)"
    if port == metrics_port:
        return f"--liveness {liveness!r}: port {port} is also --metrics-port; give them different ports"
    return None


def _cmd_run(args: argparse.Namespace) -> int:
    from voxtral_operator import runner

    problem = _liveness_problem(args.liveness, args.metrics_port)
    if problem is not None:
        raise InputError(problem)
    config = read_config(args.config)
    problem = runner.credentials_problem()
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_FAILED
    return runner.run_operator(args, config)


def _cmd_gateway(args: argparse.Namespace) -> int:
    from voxtral_operator.gateway.main import run_gateway

    return run_gateway(args)


def _version() -> str:
    try:
        return metadata.version("voxtral-operator")
    except metadata.PackageNotFoundError:  # run from a source tree without installing
        return "unknown"


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="voxtral-operator",
        description="Dedicated Voxtral speech-model endpoints on Kubernetes, served by vLLM.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "render",
        help="print the Kubernetes objects endpoints become (what the operator applies)",
        description="Print the Kubernetes objects each VoxtralEndpoint becomes, or why it is refused (exit 2).",
    )
    p.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        metavar="PATH",
        help="a YAML or JSON file (several documents, a list or a `kind: List` are fine), a directory "
        "(its *.yaml, *.yml and *.json files, sorted), or - for stdin; repeat for more",
    )
    p.add_argument("--config", metavar="FILE", help="operator config YAML (default: every setting's default)")
    p.set_defaults(func=_cmd_render)

    p = sub.add_parser(
        "hardware",
        help="GPU types and tensor-parallel sizes a model fits, with KV-cache capacity and price",
        description="Where a model fits before you create an endpoint: per GPU type and tensor-parallel size, "
        "the memory left, the KV cache in tokens and in concurrent 30-minute audio streams, and the hourly "
        "price when the operator config gives one.",
    )
    p.add_argument("--model", required=True, help="a Hugging Face model id from the catalog")
    p.add_argument(
        "--max-model-len", type=int, default=None, metavar="N", help="context length in tokens (default: 32768)"
    )
    p.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=None,
        metavar="F",
        help="share of each GPU's memory vLLM may use (default: 0.9)",
    )
    p.add_argument("--config", metavar="FILE", help="operator config YAML (GPU memory overrides, prices)")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table", help="output format")
    p.add_argument("--all", action="store_true", help="also list the combinations that do not fit")
    p.set_defaults(func=_cmd_hardware)

    p = sub.add_parser("crd", help="print the VoxtralEndpoint CustomResourceDefinition")
    p.set_defaults(func=_cmd_crd)

    p = sub.add_parser("rbac", help="print the chart's ClusterRole template (the permissions the code uses)")
    p.set_defaults(func=_cmd_rbac)

    p = sub.add_parser(
        "run",
        help="run the operator (needs a kubeconfig or an in-cluster service account)",
        description="Run the operator against the cluster of the kubeconfig (KUBECONFIG or ~/.kube/config), "
        "or the one it runs in.",
    )
    p.add_argument("--config", metavar="FILE", help="operator config YAML (default: every setting's default)")
    p.add_argument("--namespace", "-n", action="append", default=[], help="watch only this namespace; repeat for more")
    p.add_argument(
        "--liveness",
        default="http://0.0.0.0:8080/healthz",
        metavar="URL",
        help="kopf liveness endpoint URL ('' = off)",
    )
    p.add_argument("--metrics-port", type=_port, default=9090, metavar="PORT", help="Prometheus metrics port (0 = off)")
    p.add_argument("--peering", default=None, metavar="NAME", help="KopfPeering name: several replicas, one active")
    p.add_argument("--priority", type=int, default=None, help="peering priority (default: random)")
    p.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=None,
        help="text lines for people, or JSON lines for log pipelines (default: the config's logFormat, text)",
    )
    p.add_argument("--verbose", action="store_true", help="debug logs, kopf's per-handler lines included")
    p.set_defaults(func=_cmd_run, version=_version())

    p = sub.add_parser(
        "gateway",
        help="run one endpoint's gateway: caller keys, a central queue and work-aware dispatch to its vLLM replicas",
        description="The HTTP front door of one VoxtralEndpoint: checks caller keys, queues requests centrally, "
        "sends each to the ready vLLM replica with the least outstanding work, holds requests while the endpoint "
        "scales from zero. Reads the Secrets it names from their mounted files under --secrets-dir (the kubelet "
        "mounts and refreshes them; no Secret is read through the API), and EndpointSlices and its VoxtralEndpoint "
        "through watches (KUBECONFIG, else the pod's service account).",
    )
    p.add_argument("--namespace", required=True, metavar="NS", help="the endpoint's namespace")
    p.add_argument(
        "--endpoint",
        required=True,
        metavar="NAME",
        help="the VoxtralEndpoint's name: its spec.suspended and spec.gateway.holdTimeoutSeconds are followed live",
    )
    p.add_argument(
        "--backend-service",
        required=True,
        metavar="SVC",
        help="the vLLM replicas: ready addresses of EndpointSlices labelled kubernetes.io/service-name=SVC, "
        'port named "http"',
    )
    p.add_argument(
        "--backend-key-secret",
        metavar="SECRET:KEY",
        help="the key sent to vLLM as Authorization: Bearer (default: none)",
    )
    p.add_argument(
        "--caller-keys-secret",
        action="append",
        default=[],
        metavar="SECRET[:KEY]",
        help="accepted caller keys: that data key, or every data entry of the Secret; repeat for more "
        "(none: no caller auth)",
    )
    p.add_argument(
        "--secrets-dir",
        default=str(SECRETS_DIR),
        metavar="DIR",
        help="where each named Secret is mounted, as DIR/SECRET/KEY (default: %(default)s)",
    )
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default: 0.0.0.0)")
    p.add_argument("--port", type=int, default=8000, help="API port (default: 8000)")
    p.add_argument("--metrics-port", type=int, default=9091, help="metrics, /healthz and /readyz port (default: 9091)")
    p.add_argument(
        "--tls-secret", metavar="SECRET", help="kubernetes.io/tls Secret: serve HTTPS, reloaded when the Secret changes"
    )
    p.add_argument(
        "--max-inflight-per-replica",
        type=int,
        default=256,
        metavar="N",
        help="requests in flight per replica, vLLM's max-num-seqs (default: 256)",
    )
    p.add_argument(
        "--max-queue", type=int, default=1000, metavar="N", help="queued requests beyond: 429 (default: 1000)"
    )
    p.add_argument(
        "--queue-timeout-seconds",
        type=float,
        default=600.0,
        metavar="S",
        help="a queued request waiting longer: 503 (default: 600)",
    )
    p.add_argument(
        "--hold-timeout-seconds",
        type=float,
        default=1200.0,
        metavar="S",
        help="how long a request waits while no replica is ready (scale from zero), unless the endpoint's "
        "spec.gateway.holdTimeoutSeconds says otherwise (default: 1200)",
    )
    p.add_argument(
        "--max-deferrable-queue",
        type=int,
        default=10000,
        metavar="N",
        help="queued deferrable (service_tier flex) requests beyond: 429 (default: 10000)",
    )
    p.add_argument(
        "--deferrable-timeout-seconds",
        type=float,
        default=21600.0,
        metavar="S",
        help="a deferrable request waiting longer for spare capacity, held or queued: 503 (default: 21600)",
    )
    p.add_argument(
        "--kv-cache-tokens-per-replica",
        type=int,
        default=0,
        metavar="N",
        help="this pod's share of a replica's KV cache in tokens: deferrable work stays within it "
        "(default: 0, no KV bound)",
    )
    p.add_argument(
        "--take-back-read-seconds",
        type=float,
        default=0.0,
        metavar="S",
        help="every S seconds read vllm:num_requests_waiting of each replica where this pod has an unanswered "
        "interactive request beside deferrable ones it can send again, and take back those it may wait behind "
        "(0: take back by this pod's count of KV tokens when an interactive request is sent; default: 0)",
    )
    p.add_argument(
        "--deferrable-priority",
        type=int,
        default=None,
        metavar="N",
        help="the priority deferrable chat/completions requests carry (vLLM runs --scheduling-policy priority; "
        "default: none)",
    )
    p.add_argument("--max-upload-mb", type=float, default=25.0, metavar="N", help="upload size cap in MB (default: 25)")
    p.add_argument(
        "--json-buffer-mb",
        type=float,
        default=128.0,
        metavar="N",
        help="JSON bodies longer than 64 KiB that name no service_tier in those are read whole before dispatch "
        "(to find it anywhere in them) while they fit N MB in all; the others stream (0: always; default: 128)",
    )
    p.add_argument(
        "--resend-buffer-mb",
        type=float,
        default=256.0,
        metavar="N",
        help="bodies of deferrable requests in flight kept (N MB in all) so that an interactive request can take "
        "them back and they are sent again later; a body beyond it streams unkept (0: none; default: 256)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=4096,
        metavar="N",
        help="open client connections per gateway process; more are closed as they come (default: 4096)",
    )
    p.add_argument(
        "--idle-timeout-seconds",
        type=float,
        default=75.0,
        metavar="S",
        help="a connection with no request (or an unfinished request head) for this long is closed (default: 75)",
    )
    p.add_argument(
        "--header-timeout-seconds",
        type=float,
        default=10.0,
        metavar="S",
        help="a request's head must be complete this long after its first byte (default: 10)",
    )
    p.add_argument(
        "--body-timeout-seconds",
        type=float,
        default=30.0,
        metavar="S",
        help="an upload that sends nothing for this long is abandoned and its replica slot released (default: 30)",
    )
    p.add_argument(
        "--key-requests-per-minute",
        type=float,
        metavar="R",
        help="requests per minute each caller key may send to this gateway pod; beyond: 429 (default: no limit)",
    )
    p.add_argument(
        "--key-audio-seconds-per-minute",
        type=float,
        metavar="A",
        help="seconds of audio per minute each caller key may send to this gateway pod (default: no limit)",
    )
    p.add_argument(
        "--key-concurrent-requests",
        type=int,
        metavar="N",
        help="requests each caller key may have queued or in flight on this gateway pod (default: no limit)",
    )
    p.add_argument(
        "--key-override",
        action="append",
        default=[],
        metavar="NAME:SETTING=VALUE,...",
        help="weight and limits of the key in Secret entry NAME: weight (share of dispatch while keys wait, "
        "default 1), requests-per-minute, audio-seconds-per-minute, concurrent-requests; repeat per key",
    )
    p.add_argument(
        "--realtime-sessions-per-replica",
        type=int,
        default=0,
        metavar="N",
        help="serve the WebSocket /v1/realtime, admitting N sessions per replica from this gateway pod "
        "(default: 0, no realtime route)",
    )
    for flag, default, what in (
        ("--realtime-max-session-seconds", 9961.0, "a realtime session is closed (1008) after this long"),
        ("--realtime-idle-seconds", 60.0, "a realtime session that sends nothing for this long is closed (1001)"),
        ("--realtime-drain-seconds", 120.0, "a leaving replica's sessions are closed (1012) after this long"),
        ("--realtime-messages-per-second", 50.0, "messages a session may send per second, over 5 s (1008)"),
        ("--realtime-full-wait-seconds", 10.0, "a handshake waits this long for room on a full endpoint, then 503"),
        ("--realtime-slow-reader-seconds", 10.0, "a session whose caller reads nothing for this long is closed"),
    ):
        p.add_argument(flag, type=float, default=default, metavar="S", help=f"{what} (default: {default:g})")
    p.add_argument(
        "--realtime-max-frame-bytes",
        type=int,
        default=1024 * 1024,
        metavar="B",
        help="largest message a realtime session may send (1009 beyond; default: 1 MiB)",
    )
    p.add_argument("--log-format", choices=LOG_FORMATS, default="text", help="text lines or JSON lines (default: text)")
    p.add_argument("--verbose", action="store_true", help="debug logs: one line per request")
    p.set_defaults(func=_cmd_gateway)

    # Every command's flags at a glance; `COMMAND --help` explains each one.
    usages = [command.format_usage().removeprefix("usage: ").strip() for command in sub.choices.values()]
    top.epilog = "every command and its flags (COMMAND --help explains them):\n" + "\n".join(
        f"  {usage}" for usage in usages
    )
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except InputError as exc:
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `render ... | head`: the reader has gone, nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when exiting
        return 0
    except Exception as exc:
        if os.environ.get(DEBUG_ENV):
            raise
        print(
            f"error: internal error: {type(exc).__name__}: {exc}\n"
            f"This is a bug in voxtral-operator; {DEBUG_ENV}=1 prints its traceback.",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
    return result


if __name__ == "__main__":
    sys.exit(main())
