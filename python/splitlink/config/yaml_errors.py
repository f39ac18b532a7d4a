"""The YAML error reporter every strict splitlink file shares (FLYamlData, run files, job files):
one reader, line numbers for every key path, and pydantic's errors turned into problems that name the
line, the key path and what is allowed, all reported at once in one :class:`YamlConfigError`."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml
from pydantic import BaseModel, ValidationError

from splitlink.errors import Problem, YamlConfigError

__all__ = ["Loc", "YamlLines", "parse_yaml_document", "path_str", "pydantic_problems", "read_yaml_text"]

Loc = tuple[str | int, ...]


def path_str(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class YamlLines:
    """Line numbers of every key path in a YAML document, and the problems the parser alone sees."""

    def __init__(self, node: yaml.Node | None) -> None:
        self.lines: dict[Loc, int] = {}
        self.problems: list[Problem] = []
        if node is not None:
            self.lines[()] = node.start_mark.line + 1
            self._walk(node, ())

    def _walk(self, node: yaml.Node, loc: Loc) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, value_node in node.value:
                key = key_node.value
                sub = loc + (key,)
                if key in seen:
                    self.problems.append(
                        Problem(
                            key_node.start_mark.line + 1,
                            path_str(sub),
                            "duplicate key (YAML would silently keep only the last one)",
                        )
                    )
                seen.add(key)
                self.lines.setdefault(sub, key_node.start_mark.line + 1)
                self._walk(value_node, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.lines[loc + (i,)] = item.start_mark.line + 1
                self._walk(item, loc + (i,))

    def line(self, loc: Loc) -> int | None:
        for n in range(len(loc), -1, -1):
            if loc[:n] in self.lines:
                return self.lines[loc[:n]]
        return None


def _field_model(annotation: Any) -> Any:
    """The pydantic model inside an annotation such as ``list[X] | None``."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType, list):
        for arg in typing.get_args(annotation):
            found = _field_model(arg)
            if found is not None:
                return found
        return None
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _model_at(loc: Loc, root: type[BaseModel]) -> type[BaseModel] | None:
    model: Any = root
    for part in loc:
        if isinstance(part, int):
            continue
        if model is None or part not in model.model_fields:
            return None
        model = _field_model(model.model_fields[part].annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _describe_allowed(loc: Loc, root: type[BaseModel]) -> str:
    model = _model_at(loc, root)
    if model is None:
        return ""
    return "allowed keys: " + ", ".join(model.model_fields)


def _range_text(loc: Loc, fallback: str, root: type[BaseModel]) -> str:
    model = _model_at(loc[:-1], root)
    field = model.model_fields.get(str(loc[-1])) if model else None
    if field is None:
        return fallback.replace("Input should be ", "a number ")
    lo = hi = None
    lo_open = hi_open = False
    for m in field.metadata:
        if getattr(m, "ge", None) is not None:
            lo = m.ge
        if getattr(m, "gt", None) is not None:
            lo, lo_open = m.gt, True
        if getattr(m, "le", None) is not None:
            hi = m.le
        if getattr(m, "lt", None) is not None:
            hi, hi_open = m.lt, True
    kind = "an integer" if "int" in str(field.annotation) and "float" not in str(field.annotation) else "a number"
    if lo is not None and hi is not None:
        return (
            f"{kind} {'>' if lo_open else '>='} {lo} and {'<' if hi_open else '<='} {hi}"
            if (lo_open or hi_open)
            else f"{kind} {lo}..{hi}"
        )
    if lo is not None:
        return f"{kind} {'>' if lo_open else '>='} {lo}"
    return f"{kind} {'<' if hi_open else '<='} {hi}"


def pydantic_problems(err: ValidationError, lines: YamlLines, root: type[BaseModel]) -> list[Problem]:
    """Problems (line, key path, what is allowed) from a pydantic error on a YAML document."""
    problems: list[Problem] = []
    seen: set[tuple[Loc, str]] = set()
    for e in err.errors(include_url=False):
        loc: Loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and ("[" in p or p in ("str", "float"))))
        # Unions report each branch; keep one message per location.
        kind = e["type"]
        if kind == "extra_forbidden":
            msg = f"unknown key; {_describe_allowed(loc[:-1], root)}"
        elif kind == "missing":
            sub = _model_at(loc, root)
            if sub is not None:
                req = [n for n, f in sub.model_fields.items() if f.is_required()]
                opt = [n for n, f in sub.model_fields.items() if not f.is_required()]
                msg = f"missing; required: a mapping with {', '.join(req)}" + (f" (optional: {', '.join(opt)})" if opt else "")
            else:
                msg = "missing (required)"
        elif loc and loc[-1] == "sens":
            msg = (
                f"wrong type ({type(e['input']).__name__} {e['input']!r}); expected a number (a constant sens) or "
                "a string (the name of a sens tensor a peer sends)"
            )
        elif kind == "literal_error":
            msg = f"{e['input']!r} is not allowed; {e['msg'].replace('Input should be', 'allowed:')}"
        elif kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
            msg = f"{e['input']!r} is out of range; allowed: {_range_text(loc, e['msg'], root)}"
        elif kind in ("model_type", "model_attributes_type", "dict_type") and _model_at(loc, root) is not None:
            sub = _model_at(loc, root)
            assert sub is not None
            req = [n for n, f in sub.model_fields.items() if f.is_required()]
            opt = [n for n in sub.model_fields if n not in req]
            keys = (
                f"keys {', '.join(req)}" + (f" (optional: {', '.join(opt)})" if opt else "")
                if req
                else f"the optional keys {', '.join(opt)}"
            )
            msg = f"wrong type ({type(e['input']).__name__} {e['input']!r}); expected a mapping with {keys}"
            if not req:
                msg += "; leave the section out for the defaults"
        elif kind.endswith("_type") or kind.endswith("_parsing") or kind == "model_type":
            msg = f"wrong type ({type(e['input']).__name__} {e['input']!r}); {e['msg'].replace('Input should be', 'expected')}"
        elif kind == "too_short":
            msg = f"must not be empty ({e['msg']})"
        else:
            msg = e["msg"]
        if (loc, "x") in seen:
            continue
        seen.add((loc, "x"))
        problems.append(Problem(lines.line(loc), path_str(loc), msg))
    return problems


def read_yaml_text(path: Path, what: str) -> str:
    """The text of a YAML file; a missing file or one that is not UTF-8 is named as ``what``."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist") from None
    except UnicodeDecodeError as e:
        raise YamlConfigError(str(path), [Problem(None, "", f"not UTF-8 text ({e})")]) from None


def parse_yaml_document(text: str, source: str) -> tuple[Any, YamlLines]:
    """``yaml.safe_load`` of ``text`` plus its node tree for line numbers; invalid YAML is one
    ``YamlConfigError`` naming ``source`` and the line. The one reader of FLYamlData and run files."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        msg = f"not valid YAML: {getattr(e, 'problem', None) or e}"
        raise YamlConfigError(source, [Problem(line, "", msg)]) from None
    return raw, YamlLines(node)
