"""The settings reference (docs/settings.md), rendered from Settings' own fields: each
setting is described once, in bgsvc.config, and a test fails when the file is stale."""

from __future__ import annotations

import json
import os
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import AliasChoices, SecretStr
from pydantic.fields import FieldInfo

from bgsvc.config import Settings

REFERENCE_PATH = "docs/settings.md"
REFERENCE_COMMAND = f"bgsvc settings --markdown > {REFERENCE_PATH}"


def env_names(name: str, field: FieldInfo) -> list[str]:
    """The environment variables a field is read from: BGSVC_<NAME>, or the standard
    names of its AliasChoices (the bare field name there only serves keyword arguments)."""
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return [c.upper() for c in alias.choices if isinstance(c, str) and c != name]
    return [f"{Settings.model_config.get('env_prefix', '')}{name.upper()}"]


def section_of(field: FieldInfo) -> str:
    """The reference section a field names in its json_schema_extra ('' when none)."""
    extra = field.json_schema_extra
    section = extra.get("section") if isinstance(extra, dict) else None
    return section if isinstance(section, str) else ""


_TYPE_NAMES: dict[object, str] = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    Path: "path",
    SecretStr: "secret string",
}


def _type_text(field: FieldInfo) -> str:
    annotation: Any = field.annotation
    if get_origin(annotation) in (Union, types.UnionType):
        annotation = next(a for a in get_args(annotation) if a is not type(None))
    origin = get_origin(annotation)
    if origin is Literal:
        *first, last = (f"`{v}`" for v in get_args(annotation))
        return f"{', '.join(first)} or {last}"
    if origin is list:
        return "JSON list"
    if origin is dict:
        return "JSON object"
    text = _TYPE_NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))
    ge, gt, le = (
        next((getattr(m, key) for m in field.metadata if isinstance(m, kind)), None)
        for key, kind in (
            ("ge", annotated_types.Ge),
            ("gt", annotated_types.Gt),
            ("le", annotated_types.Le),
        )
    )
    if ge is not None and le is not None:
        return f"{text}, {ge} to {le}"
    bounds = [
        f"{sign} {bound}"
        for sign, bound in ((">=", ge), (">", gt), ("<=", le))
        if bound is not None
    ]
    return f"{text}, {' and '.join(bounds)}" if bounds else text


def _default_text(name: str, field: FieldInfo) -> str:
    value = field.get_default(call_default_factory=True)
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if value is None:
        return "(unset)"
    if value == "":
        return "(empty)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, Path):
        # The home directory of whoever renders the reference is not part of it.
        home = str(Path.home())
        text = str(value)
        return f"`~{text[len(home) :]}`" if text.startswith(home + os.sep) else f"`{text}`"
    if isinstance(value, list | dict):
        return f"`{json.dumps(value)}`"
    if isinstance(value, int) and name.endswith("_bytes") and value and value % 2**20 == 0:
        return f"`{value}` ({value // 2**20} MiB)"
    return f"`{value}`"


def _cell(text: str) -> str:
    # "<model_dir>" would render as an unknown HTML tag, i.e. not at all.
    return text.replace("|", "\\|").replace("<", "&lt;").replace("\n", " ")


def settings_markdown() -> str:
    """docs/settings.md: every setting, grouped by section, from the fields' own types,
    defaults and descriptions."""
    # Settings lists the parts' fields server first (config/__init__), in section order.
    sections: dict[str, list[str]] = {}
    for name, field in Settings.model_fields.items():
        names = ", ".join(f"`{env}`" for env in env_names(name, field))
        row = (
            f"| {names} | {_cell(_type_text(field))} | {_cell(_default_text(name, field))} "
            f"| {_cell(field.description or '')} |"
        )
        sections.setdefault(section_of(field) or "Other", []).append(row)
    lines = [
        f"<!-- Generated from src/bgsvc/config/ by `{REFERENCE_COMMAND}`; "
        "edit the descriptions there, not here. -->",
        "",
        "# Settings",
        "",
        "Environment variables, read once at start by `src/bgsvc/config/`, the only package "
        "that reads the environment. A name without the `BGSVC_` prefix is the standard one "
        "that other tools read as well (OpenTelemetry, prometheus-client, CUDA, gunicorn's "
        "`WEB_CONCURRENCY`). Booleans are `true` or `false`; lists and objects are "
        'written as JSON, e.g. `BGSVC_MODELS=\'["imgly-medium", "birefnet"]\'`. A value '
        "outside its type or bounds stops the service at start.",
        "",
        *(f"- [{title}](#{_anchor(title)})" for title in sections),
    ]
    for title, rows in sections.items():
        lines += [
            "",
            f"## {title}",
            "",
            "| variable | type | default | meaning |",
            "|---|---|---|---|",
            *rows,
        ]
    return "\n".join(lines) + "\n"


def _anchor(title: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as dashes."""
    kept = "".join(c for c in title.lower() if c.isalnum() or c in " -")
    return kept.replace(" ", "-")
