"""The shipped package stands alone: no test machinery in its imports or its dependencies."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ROOT / "operator" / "voxtral_operator"
# Test and demo machinery: the testbed package and the API server emulator it is built on.
NOT_SHIPPED = frozenset({"voxtral_testbed", "kmock"})


def forbidden_imports(source: str) -> list[str]:
    """Modules from NOT_SHIPPED that `source` imports, anywhere in it (function bodies too)."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [name for name in names if name.split(".")[0] in NOT_SHIPPED]
    return found


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import kmock", ["kmock"]),
        ("import os, kmock.dsl as dsl", ["kmock.dsl"]),
        ("from kmock._internal.rendering import X", ["kmock._internal.rendering"]),
        ("from voxtral_testbed.harness import free_port", ["voxtral_testbed.harness"]),
        ("def f():\n    from voxtral_testbed import demo\n", ["voxtral_testbed"]),
        ("import kmockery\nfrom voxtral_operator.testbed import x\nfrom . import kmock", []),
    ],
)
def test_forbidden_imports_finds_the_test_machinery(source: str, expected: list[str]) -> None:
    assert forbidden_imports(source) == expected


def test_the_product_imports_no_test_machinery() -> None:
    modules = sorted(PRODUCT.rglob("*.py"))
    assert PRODUCT / "cli.py" in modules
    offenders = {
        str(path.relative_to(ROOT)): found for path in modules if (found := forbidden_imports(path.read_text()))
    }
    assert offenders == {}


def requirement_name(requirement: str) -> str:
    """The distribution name a PEP 508 requirement string names, normalised (PEP 503)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match is not None, requirement
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def test_the_product_does_not_depend_on_kmock() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {requirement_name(requirement) for requirement in project["dependencies"]}
    assert "kopf" in names
    assert "kmock" not in names
    assert "voxtral-testbed" not in names
