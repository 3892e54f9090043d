"""The launch form's fields, read off `MBPOConfig`: every field with its default, its type and its
description, so the form documents the config without a second copy of it."""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from mbpo_core.config import MBPOConfig

FieldKind = Literal["bool", "choice", "int", "float", "text", "list"]


@dataclass(frozen=True)
class FormField:
    path: str  # "train.lora.r"
    name: str
    kind: FieldKind
    default: Any
    description: str
    optional: bool
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None

    @property
    def default_text(self) -> str:
        if self.default is None:
            return ""
        if isinstance(self.default, bool):
            return "true" if self.default else "false"
        if isinstance(self.default, list):
            return ", ".join(str(v) for v in self.default)
        if isinstance(self.default, float):
            return f"{self.default:.6g}"
        return str(self.default)


@dataclass(frozen=True)
class FormSection:
    path: str  # "" for the top level
    title: str
    description: str
    fields: list[FormField]


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    """(the base type, whether None is allowed): `StrictInt | None` -> (int, True)."""
    optional = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            annotation, optional = args[0], True
    if typing.get_origin(annotation) is typing.Annotated:  # StrictInt, FiniteFloat: int, float
        annotation = typing.get_args(annotation)[0]
    return annotation, optional


def _bounds(info: FieldInfo) -> tuple[float | None, float | None]:
    low = high = None
    for meta in info.metadata:
        for attr in ("ge", "gt"):
            if getattr(meta, attr, None) is not None:
                low = float(getattr(meta, attr))
        for attr in ("le", "lt"):
            if getattr(meta, attr, None) is not None:
                high = float(getattr(meta, attr))
    return low, high


def _field(path: str, name: str, info: FieldInfo) -> FormField:
    annotation, optional = _unwrap_optional(info.annotation)
    default = info.get_default(call_default_factory=True)
    low, high = _bounds(info)
    common = {"path": path, "name": name, "default": default, "description": info.description or ""}
    if annotation is bool:
        return FormField(kind="bool", optional=optional, **common)
    if typing.get_origin(annotation) is Literal:
        choices = tuple(str(c) for c in typing.get_args(annotation))
        return FormField(kind="choice", optional=optional, choices=choices, **common)
    if annotation is int:
        return FormField(kind="int", optional=optional, minimum=low, maximum=high, **common)
    if annotation is float:
        return FormField(kind="float", optional=optional, minimum=low, maximum=high, **common)
    if typing.get_origin(annotation) is list:
        return FormField(kind="list", optional=optional, **common)
    return FormField(kind="text", optional=optional, **common)


def _walk(model: type[BaseModel], prefix: str, title: str, out: list[FormSection]) -> None:
    fields: list[FormField] = []
    nested: list[tuple[str, type[BaseModel]]] = []
    for name, info in model.model_fields.items():
        annotation, _ = _unwrap_optional(info.annotation)
        path = f"{prefix}.{name}" if prefix else name
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            nested.append((name, annotation))
        else:
            fields.append(_field(path, name, info))
    doc = (model.__doc__ or "").strip().splitlines()[0] if model.__doc__ else ""
    if fields:
        out.append(FormSection(path=prefix, title=title, description=doc, fields=fields))
    for name, sub in nested:
        _walk(sub, f"{prefix}.{name}" if prefix else name, f"{title} / {name}" if prefix else name, out)


def config_sections() -> list[FormSection]:
    """Sections in declaration order: general settings first, then iig, attack, mining, train, ..."""
    out: list[FormSection] = []
    _walk(MBPOConfig, "", "general", out)
    return out
