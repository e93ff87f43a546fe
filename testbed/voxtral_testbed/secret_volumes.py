"""Secret volumes as the kubelet projects them, for the testbed's kubelet stand-ins.

The kubelet's atomic writer (pkg/volume/util/atomic_writer.go) lays a volume out as:
`KEY -> ..data/KEY` (one symlink per key), `..data -> ..TIMESTAMP` and `..TIMESTAMP/KEY` (the files).
An update writes a new timestamped directory, points a temporary `..data_tmp` symlink at it and
renames it over `..data` (one atomic step), then adds and removes the per-key symlinks and deletes
the old directory. An `optional` volume of a missing Secret is projected empty; a non-optional one
keeps the pod from starting (`MountVolume.SetUp failed ... secret "x" not found`). The kubelet
refreshes the files when it syncs the pod (about every minute); the stand-ins do it on their own
period. Mount paths are placed under a per-pod directory (`root`), as processes here share the
host's filesystem, and the container's arguments that name a path at or around a mount are rewritten
to match.
"""

from __future__ import annotations

import base64
import datetime
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATA_DIR = "..data"


def secret_payload(secret: Mapping[str, Any] | None) -> dict[str, bytes] | None:
    """A Secret's data, decoded (stringData too: the API emulator may keep it); None when no Secret."""
    if secret is None:
        return None
    payload = {str(k): base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
    payload.update({str(k): str(v).encode() for k, v in (secret.get("stringData") or {}).items()})
    return payload


def _current(directory: Path) -> dict[str, bytes] | None:
    data = directory / DATA_DIR
    if not data.is_symlink():
        return None
    target = directory / os.readlink(data)
    return {entry.name: entry.read_bytes() for entry in target.iterdir() if not entry.name.startswith(".")}


def project(directory: Path, payload: Mapping[str, bytes], mode: int = 0o644) -> bool:
    """Make `directory` hold `payload` the kubelet's way; False when it already did (nothing written)."""
    if _current(directory) == dict(payload):
        return False
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / DATA_DIR
    old = os.readlink(data) if data.is_symlink() else None
    stamp = datetime.datetime.now(tz=datetime.UTC).strftime("..%Y_%m_%d_%H_%M_%S.%f")
    fresh = directory / stamp
    fresh.mkdir()
    for key, value in payload.items():
        path = fresh / key
        path.write_bytes(value)
        path.chmod(mode)
    fresh.chmod(0o755)
    temporary = directory / "..data_tmp"
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(stamp)
    temporary.rename(data)  # the one atomic step: readers see the old version or the new, never a mix
    for key in payload:
        link = directory / key
        if not link.is_symlink():
            link.symlink_to(f"{DATA_DIR}/{key}")
    for entry in directory.iterdir():
        if not entry.name.startswith(".") and entry.name not in payload and entry.is_symlink():
            entry.unlink()
    if old is not None and old != stamp:
        shutil.rmtree(directory / old, ignore_errors=True)
    return True


@dataclass(frozen=True)
class SecretVolume:
    secret_name: str
    mount_path: str
    optional: bool
    mode: int


def pod_secret_volumes(pod_spec: Mapping[str, Any], container: Mapping[str, Any]) -> list[SecretVolume]:
    """The container's mounts of Secret volumes."""
    sources = {v["name"]: v["secret"] for v in pod_spec.get("volumes") or [] if "secret" in v}
    found = []
    for mount in container.get("volumeMounts") or []:
        source = sources.get(mount["name"])
        if source is not None:
            found.append(
                SecretVolume(
                    source["secretName"],
                    mount["mountPath"],
                    bool(source.get("optional")),
                    int(source.get("defaultMode", 0o644)),
                )
            )
    return found


class PodSecretVolumes:
    """One pod's Secret volumes under `root`; `sync` projects what each Secret holds now."""

    def __init__(self, root: Path, volumes: list[SecretVolume]) -> None:
        self.root = root
        self.volumes = volumes

    def local(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def sync(self, lookup: Callable[[str], dict[str, bytes] | None]) -> str | None:
        """Project every volume; the kubelet's message when a non-optional Secret is missing."""
        for volume in self.volumes:
            payload = lookup(volume.secret_name)
            if payload is None and not volume.optional:
                return f'MountVolume.SetUp failed for volume: secret "{volume.secret_name}" not found'
            # Owner-readable: processes here run as the agent's own user, where fsGroup would apply.
            project(self.local(volume.mount_path), payload or {}, volume.mode | 0o400)
        return None

    def rewrite(self, argv: list[str]) -> list[str]:
        """Arguments naming a mount path, or a directory holding one, point into `root`."""

        def touches(arg: str) -> bool:
            return arg.startswith("/") and any(
                v.mount_path == arg
                or v.mount_path.startswith(arg.rstrip("/") + "/")
                or arg.startswith(v.mount_path + "/")
                for v in self.volumes
            )

        return [str(self.local(arg)) if touches(arg) else arg for arg in argv]
