"""Desired child objects of a VoxtralEndpoint: a pure function of the endpoint and the operator config.

Manifests are jinja2 templates (what a platform engineer reads to see what runs on the GPU
nodes); the values they need are computed here. Every value is interpolated through `tojson`,
which here writes YAML flow style (`yaml_flow`: JSON's shape, YAML's string escapes), and the
output is parsed back, so a spec value can never alter a manifest's structure.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
from collections.abc import Mapping
from typing import Any

import jinja2
import yaml

from voxtral_operator import capacity
from voxtral_operator.api import models
from voxtral_operator.api.resolve import Plan, resolve
from voxtral_operator.config import OperatorConfig

MANAGED_BY = "voxtral-operator"
APP_NAME = "voxtral-endpoint"
COMPONENT = "inference-server"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"

CACHE_MOUNT_PATH = "/models"
# (env var, folder under the cache mount) of the compile caches kept on the model cache volume.
COMPILE_CACHE_DIRS = (
    ("VLLM_CACHE_ROOT", "vllm"),
    ("TORCHINDUCTOR_CACHE_DIR", "inductor"),
    ("TRITON_CACHE_DIR", "triton"),
)
WARMER_APP_NAME = "voxtral-cache-warmer"
WARMER_COMPONENT = "cache-warmer"
PREPULL_APP_NAME = "voxtral-image-prepull"
PREPULL_COMPONENT = "image-prepull"
# The warmer's few retries and its CPU share: a download is network-bound, hf_xet uses a few threads.
WARMER_BACKOFF_LIMIT = 3
WARMER_CPU = "2"
WARMER_MEMORY = "4Gi"
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
HOME_PATH = "/home/vllm"
PRE_STOP_SECONDS = 10
# Audio decoding may happen at the source rate before resampling: 48 kHz, stereo, float32.
AUDIO_DECODE_BYTES_PER_SECOND = 48_000 * 2 * 4
STARTUP_PROBE_PERIOD_SECONDS = 10
# vLLM fetches media from any domain when --allowed-media-domains is not given, and the flag takes
# at least one domain: an endpoint that lists none gets this reserved name (RFC 2606), which no
# URL's host can be, so vLLM fetches no URL at all.
NO_MEDIA_DOMAIN = "none.invalid"
DNS_PORT = 53
HTTPS_PORT = 443
HTTP_PORT = 80


# Printable in YAML but read as line breaks (U+2028/9) or a byte-order mark: escaped like controls.
_YAML_UNSAFE = frozenset((0x2028, 0x2029, 0xFEFF, 0xFFFE, 0xFFFF))


def _yaml_string(text: str) -> str:
    """A YAML double-quoted scalar that reads back as `text`.

    JSON's escapes are not all YAML's: a character outside the Basic Multilingual Plane becomes a
    JSON surrogate pair, which YAML refuses. Here only what YAML cannot carry raw (controls, DEL,
    C1, line and paragraph separators, BOM, U+FFFE/FFFF) is escaped; the rest, astral characters
    included, is written as itself.
    """
    out = ['"']
    for char in text:
        code = ord(char)
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif code == 0x0A:
            out.append("\\n")
        elif code < 0x20 or 0x7F <= code <= 0x9F or code in _YAML_UNSAFE or 0xD800 <= code <= 0xDFFF:
            out.append(f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def yaml_flow(value: Any) -> str:
    """`value` as one line of YAML flow style, safe to interpolate anywhere a value goes."""
    if isinstance(value, str):
        return _yaml_string(value)
    if value is None or isinstance(value, bool | int):
        return json.dumps(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value} has no YAML flow form here")  # specs bound every number
        return json.dumps(value)
    if isinstance(value, Mapping):
        # Sorted keys, as jinja2's own tojson writes them: the output does not depend on insertion order.
        items = sorted((str(k), v) for k, v in value.items())
        return "{" + ", ".join(f"{_yaml_string(k)}: {yaml_flow(v)}" for k, v in items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(yaml_flow(v) for v in value) + "]"
    raise TypeError(f"cannot render a {type(value).__name__}")


_YamlLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("voxtral_operator.render", "templates"),
    undefined=jinja2.StrictUndefined,
    autoescape=False,
    keep_trailing_newline=True,
)
_templates.filters["tojson"] = yaml_flow


def selector_labels(name: str) -> dict[str, str]:
    return {LABEL_NAME: APP_NAME, LABEL_INSTANCE: name}


def standard_labels(name: str) -> dict[str, str]:
    return {**selector_labels(name), LABEL_COMPONENT: COMPONENT, LABEL_MANAGED_BY: MANAGED_BY}


def label_selector_string(name: str) -> str:
    return ",".join(f"{k}={v}" for k, v in selector_labels(name).items())


def cache_claim_name(name: str) -> str:
    return f"{name}-cache"


def service_url(name: str, namespace: str, config: OperatorConfig, *, tls: bool = False) -> str:
    scheme = "https" if tls else "http"
    return f"{scheme}://{name}.{namespace}.svc.{config.cluster_domain}:{config.vllm_port}/v1"


def render_template(template: str, values: Mapping[str, Any]) -> dict[str, Any]:
    text = _templates.get_template(template).render(**values)
    obj = yaml.load(text, Loader=_YamlLoader)  # a safe loader, C-accelerated when available
    if not isinstance(obj, dict) or not {"apiVersion", "kind", "metadata", "spec"} <= obj.keys():
        raise AssertionError(f"{template} rendered no complete object")  # a template bug, not bad input
    return obj


def _model_flags(plan: Plan) -> list[str]:
    if plan.realtime is not None:
        # vLLM's recipe for the realtime model: its tokenizer loads only through mistral_common, and
        # piecewise CUDA graphs (full graphs do not capture its streaming encoder).
        return [
            "--tokenizer-mode",
            "mistral",
            "--compilation-config",
            json.dumps({"cudagraph_mode": "PIECEWISE"}, separators=(",", ":")),
        ]
    return [
        # The model card's loading flags: Voxtral ships mistral-format weights and tokenizer.
        "--tokenizer-mode",
        "mistral",
        "--config-format",
        "mistral",
        "--load-format",
        "mistral",
        # Function calling from voice.
        "--tool-call-parser",
        "mistral",
        "--enable-auto-tool-choice",
        # The model's own cap: five audios per prompt.
        "--limit-mm-per-prompt",
        json.dumps({"audio": 5}, separators=(",", ":")),
    ]


def vllm_args(plan: Plan, config: OperatorConfig) -> list[str]:
    spec = plan.spec
    engine = spec.engine
    args = [
        spec.model,
        "--host",
        "0.0.0.0",
        "--port",
        str(config.vllm_port),
        "--served-model-name",
        plan.served_model_name,
        *_model_flags(plan),
        "--tensor-parallel-size",
        str(plan.tensor_parallel_size),
        "--max-model-len",
        str(engine.max_model_len),
        "--gpu-memory-utilization",
        str(engine.gpu_memory_utilization),
        "--shutdown-timeout",
        str(engine.shutdown_timeout_seconds),
        # Callers' audio URLs are fetched only from the domains the endpoint lists (none: no URL at all).
        "--allowed-media-domains",
        *(engine.allowed_media_domains or [NO_MEDIA_DOMAIN]),
        "--enable-server-load-tracking",
    ]
    if engine.max_num_seqs is not None:
        args += ["--max-num-seqs", str(engine.max_num_seqs)]
    elif plan.realtime is not None:
        # One session is one running request: the engine runs as many as the gateway admits.
        args += ["--max-num-seqs", str(plan.realtime.sessions_per_replica)]
    if engine.max_queued_requests is not None:
        args += ["--max-num-queued-reqs", str(engine.max_queued_requests)]
    if spec.model_cache is not None:
        # The cache is a network volume (ReadWriteMany: NFS, Filestore, EFS): vLLM's parser documents
        # `eager` (read each file whole, then load) for network filesystems, where memory-mapped random
        # reads are slow. The memory request (1.5 x the weights + 16 GiB) holds a file read whole.
        args += ["--safetensors-load-strategy", "eager"]
    return args + list(engine.extra_args)


def vllm_env(plan: Plan) -> list[dict[str, Any]]:
    spec = plan.spec
    audio = spec.engine.audio
    env: list[dict[str, Any]] = [
        {"name": "HF_HOME", "value": f"{CACHE_MOUNT_PATH}/hf"},
        {"name": "HOME", "value": HOME_PATH},
        {"name": "VLLM_NO_USAGE_STATS", "value": "1"},
        {"name": "DO_NOT_TRACK", "value": "1"},
        # vLLM's hidden audio caps default to 10 min / 25 MB; the model handles 30-40 min.
        {"name": "VLLM_MAX_AUDIO_DECODE_DURATION_S", "value": str(audio.max_duration_seconds)},
        {"name": "VLLM_MAX_AUDIO_CLIP_FILESIZE_MB", "value": str(audio.max_file_size_mb)},
        {
            "name": "VLLM_MAX_AUDIO_DECODE_BYTES",
            "value": str(audio.max_duration_seconds * AUDIO_DECODE_BYTES_PER_SECOND),
        },
        # The engine must be allowed as long to come up as the startup probe waits.
        {"name": "VLLM_ENGINE_READY_TIMEOUT_S", "value": str(plan.model.startup_budget_seconds)},
        # A redirect would lead a media fetch off the allowed domains.
        {"name": "VLLM_MEDIA_URL_ALLOW_REDIRECTS", "value": "0"},
    ]
    if plan.realtime is not None:
        # vLLM's recipe: the compile cache is not used for the realtime model.
        env.append({"name": "VLLM_DISABLE_COMPILE_CACHE", "value": "1"})
    env += compile_cache_env(spec)
    if spec.weights_source == models.WeightsSource.PRELOADED:
        # The weights are in the cache or the image: never reach for the hub (the pod has no egress to it).
        env.append({"name": "HF_HUB_OFFLINE", "value": "1"})
    key_ref = spec.auth.api_key_secret_ref
    if spec.gateway.enabled:
        # Behind the gateway vLLM still checks a key (defence in depth): one only the gateway knows.
        secret = {"name": f"{plan.name}-backend-key", "key": "api-key"}
        env.append({"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": secret}})
    elif key_ref is not None:
        # From the Secret, never inline: the key stays out of the pod spec and the process list.
        env.append({"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": key_ref.name, "key": key_ref.key}}})
    return env


def compile_cache_env(spec: models.VoxtralEndpointSpec) -> list[dict[str, Any]]:
    """vLLM's compile cache (torch.compile graphs, under VLLM_CACHE_ROOT), Inductor's and Triton's kernels
    on the model cache volume: a later start of the same model and settings skips compiling. Each cache
    keys its entries by a hash of the model, the settings and the library versions, so replicas of other
    settings or a newer image never read a stale entry. Without a model cache they stay in the pod's HOME."""
    if spec.model_cache is None or not spec.cold_start.share_compile_cache:
        return []
    return [{"name": name, "value": f"{CACHE_MOUNT_PATH}/{folder}"} for name, folder in COMPILE_CACHE_DIRS]


def _tolerations(pool: models.NodePoolSpec | models.OverflowPoolSpec) -> list[dict[str, Any]]:
    # GPU nodes are commonly tainted nvidia.com/gpu:NoSchedule; tolerate it always.
    tolerations: list[dict[str, Any]] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    for toleration in pool.tolerations:
        item = toleration.model_dump(by_alias=True, exclude_none=True)
        if item not in tolerations:
            tolerations.append(item)
    return tolerations


def overflow_name(name: str) -> str:
    return f"{name}-overflow"


def overflow_selector(name: str) -> dict[str, str]:
    """The overflow Deployment's pods: the endpoint's selector (so the Service, gateway, PDB and
    NetworkPolicy take them as any replica) plus the pool label the reserved pods do not carry."""
    return {**selector_labels(name), capacity.POOL_LABEL: capacity.OVERFLOW}


def deployment(plan: Plan, config: OperatorConfig) -> dict[str, Any]:
    """The reserved pool's Deployment: it always carries the endpoint's whole desired count."""
    pool = plan.spec.node_pool
    return render_template(
        "deployment.yaml.j2",
        {
            **_deployment_values(plan, config),
            "name": plan.name,
            "labels": standard_labels(plan.name),
            "selector": selector_labels(plan.name),
            "replicas": plan.spec.desired_replicas,
            # The GPU product selector last: the pool's selector can never replace it (resolve refuses it too).
            "node_selector": {**pool.node_selector, config.gpu_node_label: plan.gpu.product_label},
            "tolerations": _tolerations(pool),
            "priority_class_name": pool.priority_class_name,
        },
    )


def overflow_deployment(plan: Plan, config: OperatorConfig, replicas: int = 0) -> dict[str, Any] | None:
    """The overflow pool's Deployment; its replicas come from the reserved pods (capacity.overflow_replicas)."""
    pool = plan.spec.node_pool.overflow
    if pool is None or plan.overflow_gpu is None:
        return None
    labels = {**standard_labels(plan.name), capacity.POOL_LABEL: capacity.OVERFLOW}
    return render_template(
        "deployment.yaml.j2",
        {
            **_deployment_values(plan, config),
            "name": overflow_name(plan.name),
            "labels": labels,
            "selector": overflow_selector(plan.name),
            "replicas": replicas,
            "node_selector": {**pool.node_selector, config.gpu_node_label: plan.overflow_gpu.product_label},
            "tolerations": _tolerations(pool),
            "priority_class_name": pool.priority_class_name,
        },
    )


def _deployment_values(plan: Plan, config: OperatorConfig) -> dict[str, Any]:
    """What a replica is, whichever pool it runs in."""
    spec = plan.spec
    shutdown = spec.engine.shutdown_timeout_seconds
    budget = plan.model.startup_budget_seconds
    return {
        "namespace": plan.namespace,
        "progress_deadline_seconds": budget + 300,
        # preStop pause, then the drain, then a margin for the process to exit.
        "termination_grace_period_seconds": PRE_STOP_SECONDS + shutdown + 30,
        "pre_stop_seconds": PRE_STOP_SECONDS,
        "run_as_user": config.vllm_run_as_user,
        "image": plan.image,
        "image_pull_policy": config.image_pull_policy,
        "args": vllm_args(plan, config),
        "env": vllm_env(plan),
        "port": config.vllm_port,
        "cpu": plan.cpu_request,
        "memory": plan.memory_request,
        "gpus": str(plan.tensor_parallel_size),
        "startup_failure_threshold": -(-budget // STARTUP_PROBE_PERIOD_SECONDS),
        "cache_mount_path": CACHE_MOUNT_PATH,
        "home_path": HOME_PATH,
        "cache_claim_name": cache_claim_name(plan.name) if spec.model_cache else None,
        "shm_size": config.shm_size,
    }


def service(plan: Plan, config: OperatorConfig) -> dict[str, Any]:
    return render_template(
        "service.yaml.j2",
        {
            "name": plan.name,
            "namespace": plan.namespace,
            "labels": standard_labels(plan.name),
            # Callers reach the gateway when there is one, else the ready vLLM replicas.
            "selector": gateway_selector(plan.name) if plan.spec.gateway.enabled else selector_labels(plan.name),
            "port": config.vllm_port,
        },
    )


def pod_disruption_budget(plan: Plan) -> dict[str, Any]:
    return render_template(
        "poddisruptionbudget.yaml.j2",
        {
            "name": plan.name,
            "namespace": plan.namespace,
            "labels": standard_labels(plan.name),
            "selector": selector_labels(plan.name),
        },
    )


def _operator_peer(config: OperatorConfig) -> dict[str, Any]:
    return {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": config.operator_namespace}},
        "podSelector": {"matchLabels": dict(config.operator_pod_labels)},
    }


def network_policy(plan: Plan, config: OperatorConfig) -> dict[str, Any]:
    """The vLLM replicas' policy: callers (or, with a gateway, only the gateway) and the operator."""
    if plan.spec.gateway.enabled:
        peers: list[dict[str, Any]] = [{"podSelector": {"matchLabels": gateway_selector(plan.name)}}]
    else:
        peers = caller_peers(plan)
    # The operator scrapes /metrics (autoscaling) and probes /v1/models (Serving condition).
    peers.append(_operator_peer(config))
    egress = egress_rules(plan, config)
    return render_template(
        "networkpolicy.yaml.j2",
        {
            "name": plan.name,
            "namespace": plan.namespace,
            "labels": standard_labels(plan.name),
            "selector": selector_labels(plan.name),
            "peers": peers,
            "port": config.vllm_port,
            "policy_types": ["Ingress"] if egress is None else ["Ingress", "Egress"],
            "egress": egress,
            "scrapers": [scraper.peer() for scraper in config.metrics_scrapers],
        },
    )


def gateway_network_policy(plan: Plan, config: OperatorConfig) -> dict[str, Any] | None:
    """The gateway's policy: callers on the API port; the operator and monitoring on the metrics port.
    No egress rules: it must reach the API server, whose address a NetworkPolicy cannot name portably."""
    if not plan.spec.gateway.enabled:
        return None
    operator = _operator_peer(config)
    scrapers = [scraper.peer() for scraper in config.metrics_scrapers]
    ingress = [
        {"from": [*caller_peers(plan), operator], "ports": [{"protocol": "TCP", "port": config.vllm_port}]},
        {"from": [operator, *scrapers], "ports": [{"protocol": "TCP", "port": config.gateway_metrics_port}]},
    ]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": gateway_name(plan.name),
            "namespace": plan.namespace,
            "labels": standard_labels(plan.name),
        },
        "spec": {
            "podSelector": {"matchLabels": gateway_selector(plan.name)},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


def caller_peers(plan: Plan) -> list[dict[str, Any]]:
    access = plan.spec.access
    pod_selector = {"matchLabels": dict(access.from_pod_labels)}
    peers: list[dict[str, Any]] = [{"podSelector": pod_selector}]
    for namespace in access.from_namespaces:
        if namespace == plan.namespace:
            continue
        peers.append(
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "podSelector": pod_selector,
            }
        )
    return peers


def _public_peers(config: OperatorConfig) -> list[dict[str, Any]]:
    """The public ranges less the private ones, one ipBlock per public range (excepts must lie inside it)."""
    peers = []
    for cidr in config.egress.public_cidrs:
        network = ipaddress.ip_network(cidr)
        excepts = [
            p
            for p in config.egress.private_cidrs
            if (private := ipaddress.ip_network(p)).version == network.version
            and private != network
            and private.subnet_of(network)  # type: ignore[arg-type]
        ]
        peers.append({"ipBlock": {"cidr": cidr, **({"except": excepts} if excepts else {})}})
    return peers


def egress_rules(plan: Plan, config: OperatorConfig) -> list[dict[str, Any]] | None:
    """What the vLLM pods may reach: DNS and HTTPS to the hub while weights download, HTTP(S) to public
    addresses when media domains are listed, nothing otherwise. None: the platform renders no egress policy."""
    if not config.egress.enabled:
        return None
    spec = plan.spec
    downloads = spec.weights_source == models.WeightsSource.HUB
    fetches_media = bool(spec.engine.allowed_media_domains)
    if not downloads and not fetches_media:
        return []
    return _hub_egress(config, fetches_media=fetches_media)


def _hub_egress(config: OperatorConfig, *, fetches_media: bool) -> list[dict[str, Any]]:
    """DNS, and HTTPS (plus HTTP for media) to public addresses."""
    dns = {
        "to": [
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": config.egress.dns_namespace}},
                "podSelector": {"matchLabels": dict(config.egress.dns_pod_labels)},
            }
        ],
        "ports": [{"protocol": "UDP", "port": DNS_PORT}, {"protocol": "TCP", "port": DNS_PORT}],
    }
    ports = [HTTPS_PORT] + ([HTTP_PORT] if fetches_media else [])
    web = {"to": _public_peers(config), "ports": [{"protocol": "TCP", "port": p} for p in ports]}
    return [dns, web]


def warmer_selector(name: str) -> dict[str, str]:
    return {LABEL_NAME: WARMER_APP_NAME, LABEL_INSTANCE: name}


def _hub_files(plan: Plan) -> list[str]:
    """`hf download` arguments for what vLLM reads: with the mistral load format only the consolidated
    checkpoint and the JSON files (the repositories also carry the same weights in Hugging Face's format,
    which would double the download); the realtime model loads in the default format: everything."""
    if plan.realtime is not None:
        return []
    return ["--include", "consolidated*.safetensors", "*.json"]


def cache_warmer_name(plan: Plan, config: OperatorConfig) -> str:
    """The Job's name carries a hash of its pod template (immutable in a Job): a new model or image is a new
    Job, and the old one is deleted as stale. 52 + 6 + 5 characters: within a label value's 63."""
    return f"{plan.name}-warm-{_short_hash(cache_warmer_template(plan, config))}"


def _short_hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:5]


def cache_warmer_template(plan: Plan, config: OperatorConfig) -> dict[str, Any]:
    spec = plan.spec
    labels = {**warmer_selector(plan.name), LABEL_COMPONENT: WARMER_COMPONENT, LABEL_MANAGED_BY: MANAGED_BY}
    return render_template(
        "cache-warmer-pod.yaml.j2",
        {
            "labels": labels,
            # On the pool's nodes: the image lands where replicas will run, and a ReadWriteOnce cache
            # attaches in their zone. No GPU is asked for.
            "node_selector": {**spec.node_pool.node_selector, config.gpu_node_label: plan.gpu.product_label},
            "tolerations": _tolerations(spec.node_pool),
            "run_as_user": config.vllm_run_as_user,
            "image": plan.image,
            "image_pull_policy": config.image_pull_policy,
            "command": ["hf", "download", spec.model, *_hub_files(plan)],
            "env": [
                {"name": "HF_HOME", "value": f"{CACHE_MOUNT_PATH}/hf"},
                {"name": "HF_HUB_CACHE", "value": f"{CACHE_MOUNT_PATH}/hf/hub"},
                {"name": "HOME", "value": HOME_PATH},
                # The root filesystem is read-only: temporary files go to the pod's own emptyDir.
                {"name": "TMPDIR", "value": HOME_PATH},
                {"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"},
                # hf_xet (the hub's chunked transfer) may use every core and the link's full bandwidth.
                {"name": "HF_XET_HIGH_PERFORMANCE", "value": "1"},
            ],
            "cpu": WARMER_CPU,
            "memory": WARMER_MEMORY,
            "cache_mount_path": CACHE_MOUNT_PATH,
            "home_path": HOME_PATH,
            "cache_claim_name": cache_claim_name(plan.name),
        },
    )


def cache_warmer_job(plan: Plan, config: OperatorConfig) -> dict[str, Any] | None:
    """The Job that fills the model cache before the first replica (coldStart.prestageWeights)."""
    if not plan.spec.cold_start.prestage_weights or plan.spec.model_cache is None:
        return None
    template = cache_warmer_template(plan, config)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": cache_warmer_name(plan, config),
            "namespace": plan.namespace,
            "labels": dict(template["metadata"]["labels"]),
        },
        "spec": {
            "backoffLimit": WARMER_BACKOFF_LIMIT,
            # A download that outlasts the model's whole start budget is stuck, not slow.
            "activeDeadlineSeconds": plan.model.startup_budget_seconds,
            "template": {"metadata": template["metadata"], "spec": template["spec"]},
        },
    }


def cache_warmer_network_policy(plan: Plan, config: OperatorConfig) -> dict[str, Any] | None:
    """The warmer takes no connection; it reaches DNS and HTTPS (the hub) only, when the platform renders egress."""
    if cache_warmer_job(plan, config) is None:
        return None
    egress = _hub_egress(config, fetches_media=False) if config.egress.enabled else None
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": f"{plan.name}-cache-warmer",
            "namespace": plan.namespace,
            "labels": {**standard_labels(plan.name), LABEL_COMPONENT: WARMER_COMPONENT},
        },
        "spec": {
            "podSelector": {"matchLabels": warmer_selector(plan.name)},
            "policyTypes": ["Ingress"] if egress is None else ["Ingress", "Egress"],
            **({} if egress is None else {"egress": egress}),
        },
    }


def image_prepull_daemon_set(plan: Plan, config: OperatorConfig) -> dict[str, Any] | None:
    """coldStart.prepullImage: the vLLM image on every node of the pool before a replica needs it. The
    init container runs the image's `true` (pulling it is the point); a pause container then holds the
    pod (a DaemonSet's pods must keep running), with a few millicores and no GPU."""
    spec = plan.spec
    if not spec.cold_start.prepull_image:
        return None
    selector = {LABEL_NAME: PREPULL_APP_NAME, LABEL_INSTANCE: plan.name}
    node_selector = {**spec.node_pool.node_selector, config.gpu_node_label: plan.gpu.product_label}
    tolerations = _tolerations(spec.node_pool)
    node_terms: list[dict[str, Any]] = []
    overflow = spec.node_pool.overflow
    if overflow is not None and plan.overflow_gpu is not None:
        # The overflow pool's nodes too (new on-demand nodes are where a pull costs most): a node of
        # either pool, as two terms of a required node affinity, and either pool's tolerations.
        overflow_selector = {**overflow.node_selector, config.gpu_node_label: plan.overflow_gpu.product_label}
        node_terms = [_node_selector_term(node_selector), _node_selector_term(overflow_selector)]
        node_selector = {}
        tolerations += [t for t in _tolerations(overflow) if t not in tolerations]
    return render_template(
        "image-prepull.yaml.j2",
        {
            "name": f"{plan.name}-prepull",
            "namespace": plan.namespace,
            "labels": {**selector, LABEL_COMPONENT: PREPULL_COMPONENT, LABEL_MANAGED_BY: MANAGED_BY},
            "selector": selector,
            "node_selector": node_selector,
            "node_terms": node_terms,
            "tolerations": tolerations,
            "run_as_user": config.vllm_run_as_user,
            "image": plan.image,
            "image_pull_policy": config.image_pull_policy,
            "pause_image": PAUSE_IMAGE,
        },
    )


def _node_selector_term(labels: dict[str, str]) -> dict[str, Any]:
    return {"matchExpressions": [{"key": key, "operator": "In", "values": [value]} for key, value in labels.items()]}


def persistent_volume_claim(plan: Plan) -> dict[str, Any] | None:
    cache = plan.spec.model_cache
    if cache is None:
        return None
    return render_template(
        "persistentvolumeclaim.yaml.j2",
        {
            "name": cache_claim_name(plan.name),
            "namespace": plan.namespace,
            "labels": standard_labels(plan.name),
            "access_mode": cache.access_mode,
            "size": cache.size,
            "storage_class_name": cache.storage_class_name,
        },
    )


def scaled_object(plan: Plan, config: OperatorConfig) -> dict[str, Any] | None:
    autoscaling = plan.spec.autoscaling
    if not autoscaling.enabled or autoscaling.mode != models.AutoscalingMode.KEDA:
        return None
    # Deployment pods are named <deployment>-<replicaset hash>-<suffix>; PromQL regexes are anchored.
    # The overflow Deployment's replicas wait requests too: demand as much as the pool's.
    pods = f"{overflow_name(plan.name)}-[a-z0-9]+-[a-z0-9]+|{plan.name}-[a-z0-9]+-[a-z0-9]+"
    query = f'sum(vllm:num_requests_waiting{{namespace="{plan.namespace}",pod=~"{pods}"}})'
    return render_template(
        "scaledobject.yaml.j2",
        {
            "name": plan.name,
            "namespace": plan.namespace,
            "labels": standard_labels(plan.name),
            "target_api_version": models.API_VERSION,
            "target_kind": models.KIND,
            "min_replicas": plan.spec.min_replicas,
            "max_replicas": plan.spec.max_replicas,
            "scale_down_delay_seconds": autoscaling.scale_down_delay,
            "max_scale_up_step": autoscaling.max_scale_up_step,
            "prometheus_url": config.prometheus_url,
            "query": query,
            "threshold": str(autoscaling.target_queue_depth),
        },
    )


def owner_reference(plan: Plan) -> dict[str, Any]:
    return {
        "apiVersion": models.API_VERSION,
        "kind": models.KIND,
        "name": plan.name,
        "uid": plan.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def render_plan(plan: Plan, config: OperatorConfig) -> list[dict[str, Any]]:
    objects = [
        persistent_volume_claim(plan),
        deployment(plan, config),
        overflow_deployment(plan, config),
        service(plan, config),
        pod_disruption_budget(plan),
        network_policy(plan, config),
        gateway_network_policy(plan, config),
        scaled_object(plan, config),
        cache_warmer_network_policy(plan, config),
        cache_warmer_job(plan, config),
        image_prepull_daemon_set(plan, config),
        *gateway_children(plan, config),
    ]
    rendered = [obj for obj in objects if obj is not None]
    if plan.uid:
        for obj in rendered:
            obj["metadata"]["ownerReferences"] = [owner_reference(plan)]
    return rendered


def render(endpoint: dict[str, Any], config: OperatorConfig) -> list[dict[str, Any]]:
    """Every child object of the endpoint; raises InvalidSpec naming the field at fault."""
    return render_plan(resolve(endpoint, config), config)


# The gateway's builders use this module's labels and templates: imported once both exist.
from voxtral_operator.render.gateway import gateway_children, gateway_name, gateway_selector  # noqa: E402
