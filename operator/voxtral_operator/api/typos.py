"""Pure: an unknown key named with the known key it most resembles, for a spec or a config alike."""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel


def unknown_key(model: type[BaseModel], loc: Sequence[int | str]) -> str:
    """What to say of the key at `loc` (its path into `model`) that the model does not know."""
    known = _keys_at(model, loc[:-1])
    close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}?" if close else "known keys: " + ", ".join(known)
    return f"unknown key ({hint})"


def _keys_at(model: type[BaseModel], loc: Sequence[int | str]) -> list[str]:
    """The keys a model accepts at a path into it (through nested models, dicts and lists)."""
    annotation: Any = model
    for part in loc:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            fields = annotation.model_fields
            match = [f for name, f in fields.items() if part in (name, f.alias)]
            if not match:
                return []
            annotation = match[0].annotation
        else:
            annotation = _unwrap(annotation)
    annotation = _unwrap(annotation) if not isinstance(annotation, type) else annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [f.alias or name for name, f in annotation.model_fields.items()]
    return []


def _unwrap(annotation: Any) -> Any:
    """The element type of dict[str, X], list[X] or X | None."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin is dict and len(args) == 2:
        return args[1]
    if origin in (list, typing.Union, types.UnionType) and args:
        return args[-1] if origin is dict else args[0]
    return annotation
