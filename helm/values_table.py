"""Write the chart README's values table from values.schema.json and values.yaml.

    python helm/values_table.py           # rewrite helm/tierlm/README.md between the markers
    python helm/values_table.py --check   # exit 1 if the README is out of date (tests run this)

One row per value: its key, its type and allowed values from the schema, its default from
values.yaml, and its description from the schema or else from the `# --` comment above the key
in values.yaml (the helm-docs convention). The router policy and the cloud app config are passed
verbatim to tierlm, which validates them, so each is one row.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parent / "tierlm"
README = CHART / "README.md"
BEGIN, END = "<!-- values-table:begin -->", "<!-- values-table:end -->"
# Passed through to tierlm whole: documented by its own schema (tierlm/config.py, tierlm.cloud).
OPAQUE = {"router.policy", "cloud.serve.config"}


def _comments(values_text: str) -> dict[str, str]:
    """key path -> the `# --` comment block written above it in values.yaml."""
    found: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    block: list[str] | None = None
    for line in values_text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            block = [stripped[4:].strip()]
            continue
        if stripped.startswith("#"):
            if block is not None and re.match(r"#\s", stripped + " ") and not stripped.startswith("# -"):
                block.append(stripped[1:].strip())
            continue
        match = re.match(r"^(\s*)([A-Za-z0-9_.-]+):", line)
        if not match:
            block = None
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match.group(2)))
        if block:
            found[".".join(k for _, k in stack)] = " ".join(block)
        block = None
    return found


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = {**root["definitions"][schema["$ref"].split("/")[-1]], **{k: v for k, v in schema.items() if k != "$ref"}}
    for part in schema.get("allOf", []):
        schema = {**_resolve(part, root), **{k: v for k, v in schema.items() if k != "allOf"}}
    return schema


def _type(schema: dict[str, Any]) -> str:
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    kind = schema.get("type", "object")
    return " \\| ".join(kind) if isinstance(kind, list) else kind


def _rows(values: Any, schema: dict[str, Any], root: dict[str, Any], comments: dict[str, str], path: str = "") -> list[str]:
    schema = _resolve(schema, root)
    properties = schema.get("properties", {})
    if isinstance(values, dict) and values and path not in OPAQUE and properties:
        rows = []
        for key, value in values.items():
            child = f"{path}.{key}" if path else key
            rows += _rows(value, properties.get(key, {}), root, comments, child)
        return rows
    default = json.dumps(values) if not isinstance(values, dict) or not values else "see values.yaml"
    description = schema.get("description") or comments.get(path, "")
    if not description and path.endswith(".enabled"):
        # `x.enabled` switches the feature that the comment above `x` describes.
        description = comments.get(path.removesuffix(".enabled"), "")
    description = description.replace("|", "\\|")
    return [f"| `{path}` | {_type(schema)} | `{default}` | {description} |"]


def table() -> str:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values_text = (CHART / "values.yaml").read_text()
    rows = _rows(yaml.safe_load(values_text), schema, schema, _comments(values_text))
    return "\n".join(["| key | type | default | description |", "|---|---|---|---|", *rows])


def rendered_readme() -> str:
    text = README.read_text()
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    return f"{head}{BEGIN}\n{table()}\n{END}{tail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the README's table is out of date")
    args = parser.parse_args()
    fresh = rendered_readme()
    if args.check:
        if fresh != README.read_text():
            print(f"{README} is out of date: run python helm/values_table.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
