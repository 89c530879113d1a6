"""YAML loading that remembers where every value came from, for errors that name a line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tierlm.errors import ConfigError

Path_ = tuple[str | int, ...]


@dataclass(frozen=True)
class YamlDocument:
    """A parsed YAML document plus the 1-based line of each key path in it."""

    data: Any
    lines: dict[Path_, int]
    source: str

    def line_of(self, path: Path_) -> int | None:
        """Line of the deepest prefix of `path` that exists in the file.

        A validation error can point below what the file spells out (a missing field
        inside a mapping); the nearest enclosing node is then the useful place to look.
        """
        for end in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:end]))
            if line is not None:
                return line
        return None


class YamlSyntaxError(ConfigError):
    """The text is not YAML; the message carries the line."""


def load_yaml(text: str, source: str = "<string>") -> YamlDocument:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except RecursionError:
        raise YamlSyntaxError(f"{source}: not a configuration file: nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise YamlSyntaxError(f"{where}: not valid YAML: {problem}") from exc
    lines: dict[Path_, int] = {}
    if root is not None:
        try:
            _record_lines(root, (), lines)
        except YamlSyntaxError as exc:
            raise YamlSyntaxError(f"{source}: {exc}") from None
    return YamlDocument(data=data, lines=lines, source=source)


#: Larger files are refused before parsing: no policy, tenants or recipe file comes near it, and a
#: server reloading files at run time must not parse whatever lands in its config folder.
MAX_FILE_BYTES = 4 << 20


def load_yaml_file(path: str | Path) -> YamlDocument:
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise YamlSyntaxError(f"{path}: {size} bytes, more than a configuration file may hold ({MAX_FILE_BYTES})")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise YamlSyntaxError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return load_yaml(text, source=str(path))


def _record_lines(node: yaml.Node, path: Path_, lines: dict[Path_, int]) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = (*path, key_node.value)
            if child in lines:
                # PyYAML silently keeps the last of two equal keys; a policy file that says
                # one thing twice is a mistake worth naming.
                raise YamlSyntaxError(
                    f"line {key_node.start_mark.line + 1}: duplicate key {key_node.value!r} "
                    f"(first on line {lines[child]})"
                )
            _record_lines(value_node, child, lines)
            # The key's own line is where a reader looks for a mapping entry.
            lines[child] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _record_lines(item, (*path, index), lines)
