"""Typed, frozen configs: YAML gives values, ``--set key=value`` overrides, mistakes fail loudly.

Every config in the project is a pydantic model deriving from :class:`StrictModel`
(``extra="forbid"``, ``frozen=True``). :func:`parse` turns pydantic's validation errors into
one :class:`ConfigError` whose lines name the file, the dotted key, and either the valid
keys (unknown key) or the expected type (wrong type) -- the two mistakes users make most.

Stage config files (``configs/<stage>/<model>/<variant>.yaml``) start with ``kind: <stage>``;
pipeline files (``configs/pipeline/*.yaml``) have ``steps:``. :func:`load_any` tells them apart.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

T = TypeVar("T", bound=BaseModel)


class ConfigError(ValueError):
    """A config file or override is invalid; the message says where and what is valid."""


class StrictModel(BaseModel):
    """Base of every config: unknown keys are errors and parsed configs cannot change."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


def _type_name(annotation: Any) -> str:
    name = getattr(annotation, "__name__", None)
    return name if name and "[" not in str(annotation) else str(annotation).replace("typing.", "")


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """Walk ``loc`` (pydantic error location) through nested models; None if it leaves them."""
    current: Any = model
    for part in loc:
        if isinstance(part, int) or current is None:
            continue
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                # discriminated-union tag (e.g. 'reasoning_gym') or dict key: look for a member
                return None
            current = _unwrap_model(field.annotation)
        else:
            return None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap_model(annotation: Any) -> Any:
    """The BaseModel inside ``X | None``, ``list[X]``, ``dict[str, X]``; else the annotation."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _unwrap_model(arg)
        if isinstance(found, type) and issubclass(found, BaseModel):
            return found
    return annotation


def format_validation_error(err: ValidationError, model: type[BaseModel], source: str) -> str:
    """One line per problem: ``file: key 'a.b': message``, with valid keys / expected type."""
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        dotted = ".".join(str(p) for p in loc)
        if e["type"] == "extra_forbidden":
            parent = _model_at(model, loc[:-1])
            valid = sorted(parent.model_fields) if parent else []
            hint = f"; valid keys: {', '.join(valid)}" if valid else ""
            lines.append(f"{source}: unknown key '{dotted}'{hint}")
        elif e["type"] == "missing":
            lines.append(f"{source}: missing required key '{dotted}'")
        elif not loc and e["type"] == "value_error":  # a check across keys: its message names them
            lines.append(f"{source}: {e['msg'].removeprefix('Value error, ')}")
        else:
            expected = ""
            parent = _model_at(model, loc[:-1]) if loc else None
            if parent is not None and str(loc[-1]) in parent.model_fields:
                ann = parent.model_fields[str(loc[-1])].annotation
                expected = f" (expected {_type_name(ann)})"
            got = e.get("input")
            got_s = repr(got) if not isinstance(got, (dict, list)) else type(got).__name__
            lines.append(f"{source}: key '{dotted}'{expected}: {e['msg']}, got {got_s[:80]}")
    return "\n".join(lines)


def parse(model: type[T], data: dict, source: str = "<config>") -> T:
    """Validate ``data`` into ``model``.

    Raises:
        ConfigError: listing every invalid key with the valid keys or the expected type.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, model, source)) from None


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; raises ConfigError naming the file on a syntax error or non-mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def deep_merge(base: dict, override: dict) -> dict:
    """Return ``base`` updated recursively by ``override`` (mappings merge, other values replace)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Apply ``key.sub=value`` strings (value parsed as YAML: ``3``, ``true``, ``[a, b]``).

    Raises:
        ConfigError: when an override has no ``=``.
    """
    out = copy.deepcopy(data)

    def list_index(node: list, part: str, item: str) -> int:
        if not part.isdigit() or int(part) >= len(node):
            raise ConfigError(f"override {item!r}: '{part}' is not an index of a list of {len(node)} items")
        return int(part)

    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE (e.g. max_steps=10)")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw.strip() else ""
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if isinstance(node, list):
                node = node[list_index(node, part, item)]
                continue
            node = node.setdefault(part, {})
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"override {item!r}: '{part}' is not a mapping")
        if isinstance(node, list):
            node[list_index(node, parts[-1], item)] = value
        else:
            node[parts[-1]] = value
    return out
