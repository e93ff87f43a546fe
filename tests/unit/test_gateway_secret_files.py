"""The gateway's reading of Secret volumes laid out the kubelet's way (`..data` swapped atomically)."""

from __future__ import annotations

import threading
from pathlib import Path

from voxtral_operator.gateway.sources import SecretRef, Sources, Spec, apply_secrets, read_secret_volume
from voxtral_testbed.secret_volumes import project


def test_a_volume_reads_as_the_secret_holds_it_and_empty_once_the_secret_is_gone(tmp_path: Path) -> None:
    volume = tmp_path / "callers"
    assert read_secret_volume(volume) == {}  # never mounted
    project(volume, {"alice": b"k1", "bob": b"k2"})
    assert read_secret_volume(volume) == {"alice": b"k1", "bob": b"k2"}
    project(volume, {"bob": b"k3"})
    assert read_secret_volume(volume) == {"bob": b"k3"}
    assert sorted(p.name for p in volume.iterdir() if not p.name.startswith("..")) == ["bob"]
    project(volume, {})  # an optional volume of a deleted Secret
    assert read_secret_volume(volume) == {}


def test_a_read_during_the_kubelets_swaps_never_mixes_two_versions(tmp_path: Path) -> None:
    volume = tmp_path / "tls"
    project(volume, {"tls.crt": b"A", "tls.key": b"A"})
    stop = threading.Event()

    def kubelet() -> None:
        version = 0
        while not stop.is_set():
            version += 1
            value = b"AB"[version % 2 : version % 2 + 1]
            project(volume, {"tls.crt": value, "tls.key": value})
            stop.wait(0.001)

    writer = threading.Thread(target=kubelet)
    writer.start()
    reads = []
    try:
        for _ in range(1000):
            reads.append(read_secret_volume(volume))
    finally:
        stop.set()
        writer.join()
    seen = [r for r in reads if r is not None]
    mixed = [r for r in seen if r != {"tls.crt": r.get("tls.key"), "tls.key": r.get("tls.key")} or not r]
    assert not mixed, mixed[:3]
    assert len(seen) >= 100, f"{len(reads) - len(seen)} of {len(reads)} reads gave up"


def test_missing_secrets_are_named_and_backend_keys_read_before_are_kept() -> None:
    spec = Spec(
        "speech", "svc", backend_key=SecretRef("vllm-key", "api-key"), caller_keys=(SecretRef("callers", "alice"),)
    )
    sources = Sources()
    assert apply_secrets(spec, sources, {"vllm-key": {"api-key": b"one"}, "callers": {"alice": b"c"}})
    assert sources.missing == ()
    assert not sources.misconfigured
    apply_secrets(spec, sources, {"callers": {"bob": b"c"}})  # backend key deleted; caller key renamed
    assert sources.missing == (("callers", "alice"), ("vllm-key", "api-key"))
    assert sources.backend_keys == ("one",)  # kept: running replicas accept it
    assert sources.misconfigured  # no caller key left: callers get 503, not 401
    assert apply_secrets(spec, sources, {"vllm-key": {"api-key": b"two"}, "callers": {"alice": b"c"}})
    assert sources.backend_keys == ("two", "one")
    assert sources.missing == ()
