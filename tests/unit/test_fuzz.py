"""Property-based fuzzing of the API models, `render` and `voxtral-operator render -f`.

Hostile endpoints (type confusion, huge numbers, any Unicode, long strings, deep nesting, YAML
tags and alias bombs) must end in a rendered, schema-valid set of children or in InvalidSpec:
never a traceback, never a hang, never a spec string outside its field. Each test prints how many
cases it ran. The budget is under a minute of `make test` in all; `make fuzz` runs three times as many.
"""

from __future__ import annotations

import os
import string
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import kubernetes_validate
import pydantic
import pytest
import yaml
from hypothesis import HealthCheck, given, settings

from voxtral_operator.api import catalog, flags
from voxtral_operator.api.models import VoxtralEndpointSpec
from voxtral_operator.api.resolve import InvalidSpec
from voxtral_operator.config import DEFAULT_ALLOWED_EXTRA_ARGS, OperatorConfig
from voxtral_operator.render import render

# `make test` runs a third of the cases; `make fuzz` runs them all (VOXTRAL_FUZZ_SCALE=1).
SCALE = float(os.environ.get("VOXTRAL_FUZZ_SCALE", "0.33"))


def examples(full: int) -> int:
    return max(10, round(full * SCALE))


FUZZ = settings(
    database=None,  # nothing written into the work tree
    # Milliseconds per case: a hang fails the test. Generous, because a case takes ~20 ms alone but
    # seconds on two cores busy with a control plane (5 s failed so once).
    deadline=30_000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

# --- Strategies ---

ANY_CHARACTER = st.characters(exclude_categories=())  # surrogates and controls included
ANY_TEXT = st.text(ANY_CHARACTER, max_size=80)
# Mostly valid label values and DNS names (so children get rendered), sometimes almost valid.
LABEL = st.from_regex(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,12}[A-Za-z0-9])?", fullmatch=True)
DNS = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,12}[a-z0-9])?", fullmatch=True)
LABELISH = st.one_of(LABEL, LABEL, DNS, st.text(string.ascii_letters + string.digits + "-_./ ", max_size=70))
NAMEISH = st.one_of(DNS, DNS, st.sampled_from(["ep", "team-a", "a" * 52, "a" * 53, "x.y", "-x"]), LABELISH)
LABEL_KEY = st.one_of(LABEL, st.builds(lambda p, n: f"{p}.example.com/{n}", DNS, LABEL), LABELISH)
HUGE_INTEGERS = st.integers(min_value=-(2**70), max_value=2**70)
SCALARS = st.one_of(
    ANY_TEXT,
    st.sampled_from(["", "x" * 5000, "🎙️" * 300, "\U0010ffff", "\x00", "null", "True", "1e999", "--api-key"]),
    HUGE_INTEGERS,
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
)
HOSTILE = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT | HUGE_INTEGERS, inner, max_size=4),
    max_leaves=12,
)


def _owned_spellings() -> list[str]:
    spellings = []
    for option, (dest, _) in flags.table().options.items():
        if dest in flags.refused_dests():
            spellings += [option, option.replace("-", "_"), option[:-2], f"{option}=1", f"{option}.audio"]
    return spellings


ARG_TOKENS = st.one_of(
    st.sampled_from(DEFAULT_ALLOWED_EXTRA_ARGS),
    st.sampled_from(_owned_spellings()),
    st.sampled_from(["1", "-1", "8192", "auto", "fp8", "--", "-O3", "--no-such-flag", "--trust-remote-code"]),
    ANY_TEXT,
)
ARG_VALUES = st.one_of(st.sampled_from(["1", "8192", "auto", "fp8", "0.5"]), ANY_TEXT.filter(lambda v: v[:1] != "-"))


@st.composite
def allowed_args(draw: st.DrawFn) -> list[str]:
    """Extra arguments the default platform allows: flags with values where they take one."""
    args: list[str] = []
    for flag in draw(st.lists(st.sampled_from(DEFAULT_ALLOWED_EXTRA_ARGS), max_size=4, unique=True)):
        nargs = flags.table().options[flag][1]
        args += [flag] if nargs == 0 else [flag, draw(ARG_VALUES)]
    return args


TOLERATION = st.fixed_dictionaries(
    {},
    optional={
        "key": LABELISH,
        "operator": st.sampled_from(["Exists", "Equal", "Bogus"]),
        "value": LABELISH,
        "effect": st.sampled_from(["NoSchedule", "PreferNoSchedule", "NoExecute"]),
        "tolerationSeconds": st.integers(min_value=-5, max_value=10**12),
    },
)
PLAUSIBLE_SPEC = st.fixed_dictionaries(
    {
        "model": st.sampled_from([*catalog.KNOWN_MODELS, "acme/other-model"]),
        "gpu": st.fixed_dictionaries({"type": st.sampled_from(catalog.GPU_TYPES)}),
    },
    optional={
        "modelProfile": st.fixed_dictionaries({"weightsGB": st.floats(min_value=0.1, max_value=300)}),
        "servedModelName": st.one_of(ANY_TEXT, st.text(st.characters(exclude_categories=("Cc", "Cs")), max_size=80)),
        "tensorParallelSize": st.sampled_from([1, 2, 4, 8]),
        "minReplicas": st.integers(1, 3),
        "maxReplicas": st.integers(1, 6),
        "weightsSource": st.sampled_from(["hub", "preloaded"]),
        "image": st.sampled_from(["ghcr.io/voxtral-dev/vllm-voxtral:0.33.0", "registry.local/vllm:1", "a b"]),
        "autoscaling": st.fixed_dictionaries({}, optional={"mode": st.sampled_from(["operator", "keda"])}),
        "nodePool": st.fixed_dictionaries(
            {},
            optional={
                "nodeSelector": st.dictionaries(LABEL_KEY, LABELISH, max_size=3),
                "tolerations": st.lists(TOLERATION, max_size=3),
                "priorityClassName": st.one_of(st.sampled_from(["gpu", "system-node-critical"]), LABELISH),
            },
        ),
        "engine": st.fixed_dictionaries(
            {},
            optional={
                "maxModelLen": st.integers(1024, 32768),
                "gpuMemoryUtilization": st.floats(0.5, 0.98),
                "maxNumSeqs": st.integers(1, 4096),
                "extraArgs": st.one_of(allowed_args(), allowed_args(), st.lists(ARG_TOKENS, max_size=6)),
                "allowedMediaDomains": st.lists(st.sampled_from(["cdn.example.com", "Bad Domain", "a.b"]), max_size=3),
            },
        ),
        "auth": st.fixed_dictionaries(
            {"apiKeySecretRef": st.fixed_dictionaries({"name": NAMEISH}, optional={"key": LABELISH})}
        ),
        "access": st.fixed_dictionaries(
            {},
            optional={
                "fromNamespaces": st.lists(NAMEISH, max_size=3),
                "fromPodLabels": st.dictionaries(LABEL_KEY, LABELISH, max_size=3),
            },
        ),
        "modelCache": st.fixed_dictionaries(
            {},
            optional={
                "size": st.sampled_from(["1Gi", "200Gi", "1.5Ti", "lots"]),
                "storageClassName": st.one_of(DNS, LABELISH, ANY_TEXT),
                "accessMode": st.sampled_from(["ReadWriteOnce", "ReadWriteMany"]),
            },
        ),
        "resources": st.fixed_dictionaries(
            {}, optional={"cpu": st.sampled_from(["4", "500m", "x"]), "memory": st.sampled_from(["40Gi", "1e3"])}
        ),
    },
)


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[dict[str, Any]]) -> Any:
    """A plausible value with a few places replaced by hostile ones (type confusion, unknown keys)."""
    value: Any = draw(base)
    for _ in range(draw(st.integers(0, 3))):
        node = value
        while isinstance(node, dict) and node and draw(st.booleans()):
            key = draw(st.sampled_from(sorted(node, key=str)))
            if not isinstance(node[key], dict):
                break
            node = node[key]
        if isinstance(node, dict):
            key = draw(st.sampled_from([*sorted(map(str, node)), "unknownField"])) if node else "x"
            node[key] = draw(HOSTILE)
    return value


VALID_METADATA = st.fixed_dictionaries({"name": DNS}, optional={"namespace": DNS, "uid": st.uuids().map(str)})
METADATA = st.one_of(
    VALID_METADATA,
    VALID_METADATA,
    VALID_METADATA,
    st.fixed_dictionaries({"name": NAMEISH}, optional={"namespace": NAMEISH, "uid": st.uuids().map(str)}),
    HOSTILE,
)
ENDPOINTS = st.fixed_dictionaries(
    {"metadata": METADATA, "spec": st.one_of(PLAUSIBLE_SPEC, PLAUSIBLE_SPEC, mutated(PLAUSIBLE_SPEC))},
    optional={"apiVersion": st.sampled_from(["voxtral.dev/v1alpha1", "v1"]), "kind": st.just("VoxtralEndpoint")},
)
CONFIGS = st.sampled_from(
    [
        OperatorConfig(),
        OperatorConfig.model_validate({"allowedImages": ["*"], "defaultPolicy": {"tolerateAllTaints": True}}),
        OperatorConfig.model_validate(
            {
                "allowedImages": ["*"],
                "allowedMediaDomains": ["*"],
                "defaultPolicy": {"priorityClassNames": ["gpu"], "tolerateAllTaints": True, "maxGpusPerEndpoint": 64},
            }
        ),
    ]
)

# --- Properties ---


def _strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [node] if isinstance(node, str) else []


def _check_rendered(endpoint: dict[str, Any], objects: list[dict[str, Any]]) -> None:
    """Schema-valid, YAML-stable, and every spec string exactly in its own field."""
    assert list(yaml.safe_load_all(yaml.safe_dump_all(objects, allow_unicode=True))) == objects
    for obj in objects:
        if obj["kind"] != "ScaledObject":  # KEDA's CRD, not a built-in kind
            kubernetes_validate.validate(obj, "1.34", strict=True)
        assert set(obj["metadata"]["labels"]) == {
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/component",
            "app.kubernetes.io/managed-by",
        }
    spec = VoxtralEndpointSpec.model_validate(endpoint["spec"])
    # The vLLM children bear the endpoint's name; the gateway's are NAME-gateway.
    name = endpoint["metadata"]["name"]
    gateway_side = {f"{name}-gateway", f"{name}-vllm", f"{name}-backend-key"}
    kinds = {obj["kind"]: obj for obj in objects if obj["metadata"]["name"] not in gateway_side}
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    parsed = flags.parse(args)
    assert parsed.problems == [], parsed.problems
    assert args[args.index("--served-model-name") + 1] == (spec.served_model_name or spec.model)
    extra = list(spec.engine.extra_args)
    assert args[len(args) - len(extra) :] == extra
    assert spec.node_pool.node_selector.items() <= pod["nodeSelector"].items()
    assert pod.get("priorityClassName") == spec.node_pool.priority_class_name
    if spec.model_cache is not None:
        assert kinds["PersistentVolumeClaim"]["spec"].get("storageClassName") == (
            spec.model_cache.storage_class_name or None
        )
    # Callers meet the gateway's policy when there is one, else vLLM's.
    gateway_policy = [o for o in objects if o["kind"] == "NetworkPolicy" and o["metadata"]["name"].endswith("-gateway")]
    peers = (gateway_policy or [kinds["NetworkPolicy"]])[0]["spec"]["ingress"][0]["from"]
    assert peers[0]["podSelector"]["matchLabels"] == dict(spec.access.from_pod_labels)
    # A spec string with line breaks or quotes stays one value: no piece of it became a value of its own.
    rendered = set(_strings(objects))
    for text in _strings(endpoint["spec"]):
        if "\n" in text or '"' in text:
            assert not any(part in rendered for part in text.split("\n") if len(part) > 3 and part != text)


def test_the_api_models_accept_or_refuse_every_value(capsys: pytest.CaptureFixture[str]) -> None:
    outcomes: Counter[str] = Counter()

    @settings(FUZZ, max_examples=examples(2000))
    @given(value=st.one_of(HOSTILE, mutated(PLAUSIBLE_SPEC)))
    def check(value: Any) -> None:
        try:
            VoxtralEndpointSpec.model_validate(value)
            outcomes["valid"] += 1
        except pydantic.ValidationError:
            outcomes["refused"] += 1

    check()
    with capsys.disabled():
        print(f"\nfuzz: {sum(outcomes.values())} values against the API models ({dict(outcomes)})")


def test_render_renders_valid_children_or_refuses(capsys: pytest.CaptureFixture[str]) -> None:
    outcomes: Counter[str] = Counter()

    @settings(FUZZ, max_examples=examples(1500))
    @given(endpoint=ENDPOINTS, config=CONFIGS)
    def check(endpoint: dict[str, Any], config: OperatorConfig) -> None:
        try:
            objects = render(endpoint, config)
        except InvalidSpec as exc:
            problems = exc.problems
            outcomes["refused"] += 1
        else:
            _check_rendered(endpoint, objects)
            outcomes["rendered"] += 1
            return
        assert problems, "a refusal says why"
        assert all(": " in p for p in problems), problems  # each names the field at fault

    check()
    with capsys.disabled():
        print(f"\nfuzz: {sum(outcomes.values())} endpoints through render ({dict(outcomes)})")
    assert outcomes["rendered"] > 20, "the strategies must reach the renderer, not only the validator"


# --- The CLI, through a subprocess: a handful of generated files plus hostile YAML ---

ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
    for i in range(9)
)
HOSTILE_FILES: list[Any] = [
    pytest.param(ALIAS_BOMB.encode(), id="alias-bomb"),
    pytest.param(b"!!python/object/apply:os.system ['echo pwned']\n", id="python-tag"),
    pytest.param(b"metadata: {name: !!pairs [a: 1]}\nspec: {}\n", id="pairs-name"),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, id="deep-nesting"),
    pytest.param(b"\xff\xfe\x00kind: x\n", id="not-utf8"),
    pytest.param(b"", id="empty"),
    pytest.param(b"- 1\n- 2\n", id="a-list"),
    pytest.param(
        yaml.safe_dump(
            {
                "apiVersion": "voxtral.dev/v1alpha1",
                "kind": "VoxtralEndpoint",
                "metadata": {"name": "ep"},
                "spec": {"model": "mistralai/Voxtral-Mini-3B-2507", "gpu": {"type": "L4-24GB"}, "servedModelName": "🎙️"},
            },
            allow_unicode=True,
        ).encode(),
        id="emoji",
    ),
]


def _render_cli(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "voxtral_operator.cli", "render", "-f", str(path)],
        capture_output=True,
        text=True,
        errors="replace",
        check=False,
        timeout=30,  # a hang fails the test
    )


def _assert_cli_answered(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.returncode in (0, 2), (result.returncode, result.stderr[-2000:])
    if result.returncode == 0:
        for doc in yaml.safe_load_all(result.stdout):
            if doc["kind"] != "ScaledObject":  # KEDA's CRD, not a built-in kind
                kubernetes_validate.validate(doc, "1.34", strict=True)
    else:
        assert result.stdout == ""
        assert result.stderr.startswith("error: ")


@pytest.mark.parametrize("content", HOSTILE_FILES)
def test_render_cli_answers_hostile_files_with_objects_or_a_message(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "endpoint.yaml"
    path.write_bytes(content)
    _assert_cli_answered(_render_cli(path))


def test_render_cli_on_generated_endpoints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ran = 0

    @settings(FUZZ, max_examples=6, deadline=None)
    @given(endpoint=ENDPOINTS)
    def check(endpoint: dict[str, Any]) -> None:
        nonlocal ran
        path = tmp_path / "generated.yaml"
        try:
            text = yaml.safe_dump(endpoint, allow_unicode=True)
        except (yaml.YAMLError, UnicodeEncodeError):
            text = repr(endpoint)  # not representable as YAML (lone surrogates): still a file to refuse
        path.write_text(text, encoding="utf-8", errors="surrogateescape")
        _assert_cli_answered(_render_cli(path))
        ran += 1

    check()
    with capsys.disabled():
        print(f"\nfuzz: {ran} generated files through `voxtral-operator render -f`")
