"""Read a box's YAML config file and report every problem as `FILE:LINE: field 'a.b': problem`.

pydantic reports where a problem is as a path of keys; the YAML node tree knows which line each
key is on. Composing the tree ourselves (instead of `yaml.safe_load`) keeps that map, so a
technician with a text editor is sent to the right line.
"""

from __future__ import annotations

import os
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from firmware_config.models import NodeConfig
from firmware_config.profiles import PROFILES

__all__ = ["PASSWORD_ENV", "ConfigError", "load_config", "parse_config"]

PASSWORD_ENV = "OMNISHELF_EDGE_PASSWORD"
"""Where the agent finds the broker password when the file names neither `password` nor
`password_file` (read when the agent starts, never stored in the config)."""

Loc = tuple[str | int, ...]


class ConfigError(ValueError):
    """A config file that cannot be used; `problems` holds one `FILE:LINE: …` line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def load_config(path: str | os.PathLike[str]) -> NodeConfig:
    """Load and validate a config file. Its relative paths will resolve against the file's directory
    (`NodeConfig.base_dir`), whatever the working directory is when they are used."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{p}: cannot read the config file: {getattr(exc, 'strerror', None) or exc}"]) from None
    cfg = parse_config(text, str(p))
    cfg._base_dir = Path(os.path.abspath(p)).parent
    return cfg


def parse_config(text: str, filename: str = "<config>") -> NodeConfig:
    """Validate config text (the content of a file named `filename`, for messages)."""
    data, lines, problems = _compose(text, filename)
    if data is None and not problems:
        problems.append(f"{filename}:1: the file is empty: expected a mapping with node_id, store_id and broker")
    elif data is not None and not isinstance(data, dict):
        problems.append(f"{filename}:1: the file holds a YAML {_yaml_kind(data)}: expected a mapping of settings")
    if problems:
        raise ConfigError(problems)
    assert isinstance(data, dict)
    merged = _with_profile(data)
    try:
        return NodeConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError([_describe(err, merged, lines, filename) for err in exc.errors(include_url=False)]) from None


# -- YAML with line numbers ------------------------------------------------------------------------


def _compose(text: str, filename: str) -> tuple[Any, dict[Loc, int], list[str]]:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        what = exc.problem or exc.context or "invalid YAML"
        if exc.problem and exc.context and exc.context_mark is not None:
            # The parser notices late (e.g. an unclosed '[' at the next key): say where it began.
            what += f" ({exc.context} started on line {exc.context_mark.line + 1})"
        return None, {}, [f"{filename}:{line}: YAML syntax error: {what}"]
    except yaml.YAMLError as exc:
        return None, {}, [f"{filename}:1: YAML syntax error: {exc}"]
    finally:
        loader.dispose()
    lines: dict[Loc, int] = {(): 1}
    problems: list[str] = []
    if node is not None:
        _index(node, (), lines, problems, filename)
    return data, lines, problems


def _index(node: yaml.Node, loc: Loc, lines: dict[Loc, int], problems: list[str], filename: str) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.start_mark)
            here = (*loc, key)
            line = key_node.start_mark.line + 1
            if here in lines:
                # PyYAML keeps the last value silently; a duplicated key is almost always a mistake.
                problems.append(
                    f"{filename}:{line}: field '{_dotted(here)}': duplicate key (first given on line {lines[here]})"
                )
                continue
            lines[here] = line
            _index(value_node, here, lines, problems, filename)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[(*loc, i)] = item.start_mark.line + 1
            _index(item, (*loc, i), lines, problems, filename)


def _yaml_kind(data: Any) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(type(data), "value")


# -- profiles --------------------------------------------------------------------------------------


def _with_profile(data: dict[str, Any]) -> dict[str, Any]:
    name = data.get("profile")
    if not isinstance(name, str) or name not in PROFILES:
        return data  # validation reports an unknown profile at its line
    return _merge(PROFILES[name], data)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


# -- pydantic errors → FILE:LINE: field '…': problem -----------------------------------------------


def _describe(err: ErrorDetails, data: Any, lines: dict[Loc, int], filename: str) -> str:
    loc = _strip_tags(tuple(err["loc"]), data)
    kind = err["type"]
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        loc = (*loc, "kind")
    line = next((lines[loc[:n]] for n in range(len(loc), -1, -1) if loc[:n] in lines), 1)
    return f"{filename}:{line}: field '{_dotted(loc) or '(file)'}': {_problem(err, loc, data)}"


def _strip_tags(loc: Loc, data: Any) -> Loc:
    """Drop the discriminator values pydantic puts into the path of a tagged union member."""
    out: list[str | int] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part not in node and node.get("kind") == part:
            continue
        out.append(part)
        node = (
            node.get(part)
            if isinstance(node, dict)
            else (node[part] if isinstance(node, list | tuple) and isinstance(part, int) and part < len(node) else None)
        )
    return tuple(out)


def _problem(err: ErrorDetails, loc: Loc, data: Any) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1], data)
        allowed = f" (expected one of: {', '.join(model.model_fields)})" if model else ""
        return f"unknown key{allowed}"
    if kind in ("missing", "union_tag_not_found"):
        return "required but missing"
    if kind == "union_tag_invalid":
        ctx = err.get("ctx", {})
        return f"unknown device kind {ctx.get('tag')!r}: expected one of {ctx.get('expected_tags')}"
    msg = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    if not kind.startswith("value_error") and isinstance(value, str | int | float | bool):
        msg += f" (got {value!r})"
    return msg


def _model_at(loc: Loc, data: Any) -> type[BaseModel] | None:
    """The model that validates the mapping at `loc`, to name the keys it accepts."""
    model: Any = NodeConfig
    node = data
    for part in loc:
        if isinstance(part, int):
            node = node[part] if isinstance(node, list) and part < len(node) else None
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return None
        node = node.get(part) if isinstance(node, dict) else None
        model = _unwrap(model.model_fields[part].annotation, node)
    if isinstance(node, dict) and isinstance(model, type) and issubclass(model, BaseModel):
        return model
    return None


def _unwrap(annotation: Any, node: Any) -> Any:
    """Reduce `X | None`, `tuple[X, ...]` and tagged unions to the model class for `node`."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0], node)
    if origin is tuple:
        return _unwrap(typing.get_args(annotation)[0], node[0] if isinstance(node, list) and node else None)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
        if len(models) == 1:
            return models[0]
        wanted = node.get("kind") if isinstance(node, dict) else None
        for m in models:
            field = m.model_fields.get("kind")
            if field is not None and wanted in typing.get_args(field.annotation):
                return m
        return None
    return annotation


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
