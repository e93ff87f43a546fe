"""What a user hands the CLI: manifests and config files, read as kubectl reads them, within bounds.

Kubernetes objects are JSON. YAML is read into JSON values only (strings, numbers, booleans,
null, lists, string-keyed maps), so a tag such as `!!set` or `!!python/object`, a duplicate key
or a number JSON cannot carry is refused with its line instead of surprising the renderer later.
Hostile input is refused quickly: files above MAX_INPUT_BYTES, nesting deeper than MAX_DEPTH,
and more than MAX_VALUES values once aliases are expanded (YAML "billion laughs").
"""

from __future__ import annotations

import codecs
import json
import math
import sys
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import yaml
from pydantic import BaseModel, ValidationError
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode

from voxtral_operator.api.typos import unknown_key
from voxtral_operator.config import OperatorConfig

# kubectl's limit is etcd's 1.5 MiB per object; a file of many endpoints may hold a few.
MAX_INPUT_BYTES = 4 * 2**20
# A VoxtralEndpoint nests about 6 levels deep; a List of them 8.
MAX_DEPTH = 64
# Values after aliases are expanded: a few hundred per endpoint.
MAX_VALUES = 250_000
# What kubectl reads from a directory given to -f.
MANIFEST_SUFFIXES = (".json", ".yaml", ".yml")
STDIN = "-"


class InputError(Exception):
    """A user's input cannot be used; the message says why and where, for a person to read."""


@dataclass(frozen=True)
class Document:
    """One object from the input, and where it came from (for messages)."""

    where: str
    body: Any


# --- files, directories, stdin ------------------------------------------------------------


def expand_paths(paths: Sequence[str]) -> list[str]:
    """Files to read, in order: a directory stands for its manifest files, sorted by name (not recursive)."""
    files: list[str] = []
    for path in paths:
        if path == STDIN or not Path(path).is_dir():
            files.append(path)
            continue
        found = sorted(p for p in Path(path).iterdir() if p.suffix in MANIFEST_SUFFIXES and p.is_file())
        if not found:
            raise InputError(f"{path}: no manifest files in this directory (looked for {', '.join(MANIFEST_SUFFIXES)})")
        files += [str(p) for p in found]
    return files


def _read_bounded(stream: BinaryIO, where: str) -> bytes:
    data = stream.read(MAX_INPUT_BYTES + 1)
    if len(data) > MAX_INPUT_BYTES:
        raise InputError(f"{where}: larger than {MAX_INPUT_BYTES // 2**20} MiB; refusing to read it")
    return data


def read_bytes(path: str, where: str) -> bytes:
    if path == STDIN:
        return _read_bounded(sys.stdin.buffer, where)
    try:
        with open(path, "rb") as stream:
            return _read_bounded(stream, where)
    except FileNotFoundError:
        raise InputError(f"{where}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{where}: is a directory, not a file") from None
    except OSError as exc:
        raise InputError(f"{where}: cannot read it: {exc.strerror or exc}") from None


def decode(data: bytes, where: str) -> str:
    """UTF-8 (with or without a byte-order mark), or UTF-16/32 with one, as YAML allows."""
    encoding = "utf-8"
    for bom, with_bom in (
        (codecs.BOM_UTF32_LE, "utf-32"),
        (codecs.BOM_UTF32_BE, "utf-32"),
        (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"),
    ):
        if data.startswith(bom):
            encoding = with_bom
            break
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(
            f"{where}: line {line}: not {encoding.upper().removesuffix('-SIG')} text "
            f"(byte 0x{data[exc.start]:02x} at offset {exc.start}); save the file as UTF-8"
        ) from None


# --- YAML into JSON values ----------------------------------------------------------------


def _refuse_tag(loader: SafeConstructor, node: Node) -> Any:
    tag = node.tag.replace("tag:yaml.org,2002:", "!!")
    raise ConstructorError(
        None, None, f"the tag {tag} is not allowed: Kubernetes objects hold only JSON values", node.start_mark
    )


class _JsonConstructor(SafeConstructor):
    yaml_constructors = dict(SafeConstructor.yaml_constructors)

    def construct_yaml_int(self, node: ScalarNode) -> int:
        try:
            value: int = super().construct_yaml_int(node)
        except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
            raise ConstructorError(None, None, "this number is too large", node.start_mark) from None
        return value

    def construct_yaml_float(self, node: ScalarNode) -> float:
        value: float = super().construct_yaml_float(node)
        if not math.isfinite(value):
            raise ConstructorError(None, None, "JSON has no infinite or NaN numbers", node.start_mark)
        return value

    def construct_timestamp_as_string(self, node: ScalarNode) -> str:
        # kubectl reads an unquoted date as the string it is; so does the API server.
        return str(self.construct_scalar(node))

    def flatten_mapping(self, node: MappingNode) -> None:
        super().flatten_mapping(node)
        if len(node.value) > MAX_VALUES:  # merge keys (`<<: *a`) copy entries: bound them as aliases are
            raise ConstructorError(None, None, f"more than {MAX_VALUES} entries after merging", node.start_mark)

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        if not isinstance(node, MappingNode):
            raise ConstructorError(None, None, f"expected a mapping, found {node.id}", node.start_mark)
        own = [pair for pair in node.value if pair[0].tag != "tag:yaml.org,2002:merge"]
        self.flatten_mapping(node)
        merged = len(node.value) - len(own)  # flatten_mapping puts merged entries first
        mapping: dict[Hashable, Any] = {}
        own_keys: set[str] = set()
        for index, (key_node, value_node) in enumerate(node.value):
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, bool) or key is None or isinstance(key, int | float):
                key = json.dumps(key)  # as kubectl turns YAML keys into JSON keys: 1 -> "1", true -> "true"
            elif not isinstance(key, str):
                raise ConstructorError(None, None, "a mapping key must be a string", key_node.start_mark)
            if index >= merged:
                if key in own_keys:
                    raise ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
                own_keys.add(key)
            mapping[key] = self.construct_object(value_node, deep=deep)
        return mapping


for _tag in ("binary", "set", "omap", "pairs"):
    _JsonConstructor.yaml_constructors[f"tag:yaml.org,2002:{_tag}"] = _refuse_tag
_JsonConstructor.yaml_constructors["tag:yaml.org,2002:int"] = _JsonConstructor.construct_yaml_int
_JsonConstructor.yaml_constructors["tag:yaml.org,2002:float"] = _JsonConstructor.construct_yaml_float
_JsonConstructor.yaml_constructors["tag:yaml.org,2002:timestamp"] = _JsonConstructor.construct_timestamp_as_string
_JsonConstructor.yaml_constructors[None] = _refuse_tag  # any other tag (`!!python/...`, `!custom`)


class _PyLoader(
    yaml.reader.Reader,
    yaml.scanner.Scanner,
    yaml.parser.Parser,
    yaml.composer.Composer,
    _JsonConstructor,
    yaml.resolver.Resolver,
):
    """PyYAML's own parser and composer with the JSON-only constructor."""

    def __init__(self, stream: str) -> None:
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        yaml.composer.Composer.__init__(self)
        _JsonConstructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)


_Loader: Any = _PyLoader  # the C loader below when PyYAML has libyaml
try:
    from yaml._yaml import CParser

    class _CLoader(CParser, _JsonConstructor, yaml.resolver.Resolver):
        """libyaml's parser and composer (C, about eight times faster) with the JSON-only constructor."""

        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            _JsonConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)

    _Loader = _CLoader
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    pass


def _yaml_error(where: str, exc: yaml.YAMLError) -> InputError:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        if mark is not None and mark.line is not None:
            return InputError(f"{where}: line {mark.line + 1}, column {mark.column + 1}: {problem}")
        return InputError(f"{where}: {problem}")
    return InputError(f"{where}: invalid YAML: {exc}")


def _check_nesting(text: str, where: str) -> None:
    """Refuse deep nesting from the event stream (iterative), before the recursive composer sees it."""
    depth = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                line = getattr(event.start_mark, "line", 0) + 1
                raise InputError(f"{where}: line {line}: nested more than {MAX_DEPTH} levels deep")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _parse_yaml(text: str, where: str) -> list[Any]:
    try:
        _check_nesting(text, where)
        loader = _Loader(text)
        try:
            documents = []
            while loader.check_data():
                documents.append(loader.get_data())
            return documents
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise _yaml_error(where, exc) from None


# --- JSON ---------------------------------------------------------------------------------


class _JsonValueError(ValueError):
    """Valid JSON syntax holding a value the API cannot take (not a reason to try YAML instead)."""


def _json_constant(name: str) -> Any:
    raise _JsonValueError(f"{name} is not a JSON number")


def _json_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _JsonValueError(f"the number {text[:20]} is too large")
    return value


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    mapping: dict[str, Any] = {}
    for key, value in pairs:
        if key in mapping:
            raise _JsonValueError(f"duplicate key {key!r}")
        mapping[key] = value
    return mapping


_JSON = json.JSONDecoder(parse_constant=_json_constant, parse_float=_json_float, object_pairs_hook=_json_object)


class _JsonSyntaxError(InputError):
    """Not JSON; it may still be YAML (`{a: 1}`)."""


def _parse_json(text: str, where: str) -> list[Any]:
    """A JSON value, or several one after another (as kubectl reads them)."""
    documents: list[Any] = []
    position = 0
    try:
        while True:
            while position < len(text) and text[position].isspace():
                position += 1
            if position == len(text):
                return documents
            value, position = _JSON.raw_decode(text, position)
            documents.append(value)
    except RecursionError:
        raise InputError(f"{where}: nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise _JsonSyntaxError(f"{where}: line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except ValueError as exc:  # from the hooks above, or an integer with too many digits
        raise InputError(f"{where}: {exc}") from None


# --- bounds on the values -----------------------------------------------------------------


def _check_values(documents: list[Any], where: str) -> None:
    """Depth and count as the renderer will walk them, aliases expanded (iteratively: no recursion)."""
    stack: list[tuple[Any, int]] = [(doc, 0) for doc in documents]
    count = 0
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise InputError(f"{where}: more than {MAX_VALUES} values (after expanding YAML aliases); refusing it")
        if isinstance(value, str):
            if not value.isascii():
                _check_text(value, where)
            continue
        if not isinstance(value, dict | list):
            continue
        if depth >= MAX_DEPTH:  # also ends an alias that refers to its own ancestor
            raise InputError(f"{where}: nested more than {MAX_DEPTH} levels deep (after expanding YAML aliases)")
        if isinstance(value, dict):
            for key, item in value.items():
                _check_text(key, where)
                stack.append((item, depth + 1))
        else:
            stack.extend((item, depth + 1) for item in value)


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{where}: a string holds a lone surrogate (\\ud800-\\udfff), which is not text") from None


def parse_text(text: str, where: str, *, json_first: bool = False) -> list[Any]:
    """Every document in a YAML or JSON stream, as JSON values; empty documents are left out.

    JSON is tried first for `.json` files and text that starts like JSON; YAML reads the rest
    (and JSON that Python's decoder refuses but YAML takes, such as `{a: 1}`).
    """
    stripped = text.lstrip()
    if json_first or stripped.startswith(("{", "[")):
        try:
            documents = _parse_json(text, where)
        except _JsonSyntaxError:
            if json_first:
                raise
            documents = _parse_yaml(text, where)
    else:
        documents = _parse_yaml(text, where)
    documents = [doc for doc in documents if doc is not None]
    _check_values(documents, where)
    return documents


# --- manifests ----------------------------------------------------------------------------


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return f"an object of kind {value.get('kind')!r}" if "kind" in value else "an object without a kind"
    return {list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__
    )


def _objects(value: Any, where: str) -> Iterator[tuple[str, Any]]:
    """A document's objects: the document itself, or the items of a list or a `kind: List`."""
    items: Any = value
    if isinstance(value, dict):
        kind = value.get("kind")
        if not (isinstance(kind, str) and kind.endswith("List")):
            yield where, value
            return
        items = value.get("items")
        if not isinstance(items, list):
            raise InputError(f"{where}: a {kind} needs `items`, a list of objects")
    for index, item in enumerate(items, 1):
        if not isinstance(item, dict):
            raise InputError(f"{where}, item {index}: expected an object, found {_kind(item)}")
        yield f"{where}, item {index}", item


def load_manifests(paths: Sequence[str]) -> list[Document]:
    """Every object in the files, directories and stdin given to -f, in order; empty input is refused."""
    found: list[Document] = []
    for path in expand_paths(paths):
        where = "<stdin>" if path == STDIN else path
        text = decode(read_bytes(path, where), where)
        documents = parse_text(text, where, json_first=path.endswith(".json"))
        objects: list[tuple[str, Any]] = []
        for number, document in enumerate(documents, 1):
            label = where if len(documents) == 1 else f"{where}, document {number}"
            if not isinstance(document, dict | list):
                raise InputError(f"{label}: expected a Kubernetes object, found {_kind(document)}")
            objects += list(_objects(document, label))
        if not objects:
            raise InputError(f"{where}: no objects in it (empty, only comments, or empty documents)")
        found += [Document(where=label, body=body) for label, body in objects]
    return found


# --- the operator config file -------------------------------------------------------------


def read_config(path: str | None) -> OperatorConfig:
    """The operator config file, or every default; a mistake is named by its key."""
    if path is None:
        return OperatorConfig()
    where = f"config {path}"
    text = decode(read_bytes(path, where), where)
    documents = parse_text(text, where)
    if len(documents) > 1:
        raise InputError(f"{where}: expected one YAML document, found {len(documents)}")
    data = documents[0] if documents else {}
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a mapping of settings, found {_kind(data)}")
    try:
        return OperatorConfig.model_validate(data)
    except ValidationError as exc:
        problems = validation_problems(exc, OperatorConfig)
        raise InputError("\n".join(f"{where}: {problem}" for problem in problems)) from None


def validation_problems(exc: ValidationError, model: type[BaseModel]) -> list[str]:
    """One line per pydantic error: the key's path as the user wrote it, and a suggestion for a typo."""
    problems = []
    for error in exc.errors():
        loc = error["loc"]
        path = ".".join(str(part) for part in loc) or "(top level)"
        if error["type"] == "extra_forbidden":
            problems.append(f"{path}: {unknown_key(model, loc)}")
        else:
            problems.append(f"{path}: {error['msg'].removeprefix('Value error, ')}")
    return problems
