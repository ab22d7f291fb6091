"""Reading a policy file: bytes -> plain Python data plus the position of every key and value.

This is the YAML half of the policy language (promotion.policy.schema is the other half); training
configs (promotion.training) are read by the same rules. It is built on PyYAML's safe
*composition* (the node graph), never on a constructor that could build arbitrary objects, and
it refuses what a plain `yaml.safe_load` would silently accept or choke on:

- a file over `MAX_BYTES` (1 MiB), bytes that are not UTF-8;
- more than one YAML document, an empty document;
- duplicate keys (PyYAML keeps the last one without a word), keys that are not strings;
- tags outside the safe core set (`!!python/...` and local tags are errors; nothing is executed);
- nesting deeper than `MAX_DEPTH`, a recursive alias, or a document that expands to more than
  `MAX_NODES` nodes once aliases are followed (the "billion laughs" attack is stopped while the
  graph is still shared, before anything is expanded).

Anchors, aliases and `<<` merge keys are supported within that bound, so rules can be shared.
Scalars resolve as PyYAML's safe loader does, with two YAML 1.2 corrections that match what
editors show: only `true`/`false` are booleans (`yes`, `no`, `on`, `off` are strings), and
numbers in exponent form (`1e-3`, `7.5e1`) are numbers.

Every problem becomes an `Issue` (file, 1-based line and column, dotted key path, message); all the
problems found are raised together as one `PolicyError` (both in promotion.policy.issues).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from promotion.policy.issues import (
    Issue,
    Key,
    Path,
    PolicyError,
    Position,
    Positions,
    format_key,
    printable,
)

# Issue, PolicyError and positions live in promotion.policy.issues; they are re-exported here,
# where readers of YAML files (the policy loader, training configs) have always found them.
__all__ = ["MAX_BYTES", "MAX_DEPTH", "MAX_NODES", "Document", "Issue", "Key", "Path",
           "PolicyError", "Position", "Positions", "format_key", "printable", "read_document"]

MAX_BYTES = 1024 * 1024
MAX_NODES = 10_000  # after expanding aliases; a real policy has well under 500
MAX_DEPTH = 32  # a policy nests 4 levels deep

_CORE = "tag:yaml.org,2002:"
# Scalars the safe constructor builds into plain values (timestamps only ever fail validation
# later, with a clear "expected a string" message, instead of failing here).
_SCALAR_TAGS = {f"{_CORE}{t}" for t in ("null", "bool", "int", "float", "str", "timestamp")}
_SEQ_TAG = f"{_CORE}seq"
_MAP_TAG = f"{_CORE}map"
_MERGE_TAG = f"{_CORE}merge"
_STR_TAG = f"{_CORE}str"


# --------------------------------------------------------------------------------------------
# The document


@dataclass
class Document:
    """A file read into plain data: dicts with str keys, lists, str/int/float/bool/None."""

    name: str
    data: Any
    positions: Positions

    def issue(self, path: Path, message: str, *, at_value: bool = False) -> Issue:
        """An Issue about the key at `path`: placed at the key (or, `at_value`, at its value)."""
        line, col = self.positions.value(path) if at_value else self.positions.key(path)
        return Issue(self.name, line, col, format_key(path), message)


# --------------------------------------------------------------------------------------------
# The loader


class _LoaderIssue(Exception):
    """Stops composition at a problem that makes the rest of the file meaningless."""

    def __init__(self, mark: yaml.Mark | None, message: str) -> None:
        super().__init__(message)
        self.position: Position = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        self.message = message


class PolicyLoader(yaml.SafeLoader):
    """SafeLoader composition with a depth bound (and the YAML 1.2 resolvers set up below)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        # The composer recurses once per nesting level: bound it before Python's stack does.
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _LoaderIssue(self.peek_event().start_mark,
                                   f"nesting deeper than {MAX_DEPTH} levels")
            node: Node | None = super().compose_node(parent, index)
            return node
        finally:
            self._depth -= 1


# YAML 1.2 core schema booleans, as editors read the file: `yes`, `no`, `on`, `off` stay strings
# (under YAML 1.1 `data_validated: yes` would silently become a boolean).
PolicyLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _CORE + "bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
PolicyLoader.add_implicit_resolver(
    _CORE + "bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
PolicyLoader.add_implicit_resolver(
    _CORE + "float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


_POLICY_SHAPE = "a policy is a mapping with at least 'model' and 'metrics'"


def read_document(data: bytes, name: str, *, noun: str = "policy file",
                  shape: str = _POLICY_SHAPE) -> Document:
    """Parse a file's bytes. Raises PolicyError listing every problem found.

    Other YAML inputs (training configs) are read by the same rules; `noun` names such a file and
    `shape` says what it holds, in the messages about a second document and an empty file.
    """
    if len(data) > MAX_BYTES:
        raise PolicyError([Issue(name, 0, 0, "", f"file is larger than 1 MiB ({len(data)} bytes)")])
    text = _decode(data, name)
    try:
        node = _compose_single(text, noun)
        if node is None:
            raise _LoaderIssue(None, f"the file is empty; {shape}")
        _check_expansion(node)
    except _LoaderIssue as exc:
        raise PolicyError([Issue(name, *exc.position, "", exc.message)]) from None
    except yaml.MarkedYAMLError as exc:
        raise PolicyError([_syntax_issue(name, exc)]) from None
    except yaml.reader.ReaderError as exc:  # control characters YAML does not allow
        line, col = _offset_position(text, exc.position)
        code = ord(exc.character) if isinstance(exc.character, str) else int(exc.character)
        raise PolicyError([Issue(name, line, col, "", f"invalid character U+{code:04X}")]) from None
    except RecursionError:  # a last guard: the depth bound should make this unreachable
        raise PolicyError([Issue(name, 1, 1, "", "the document nests too deeply")]) from None
    builder = _Builder(name)
    result = builder.build(node, ())
    if builder.issues:
        raise PolicyError(builder.issues)
    return Document(name, result, builder.positions)


def _decode(data: bytes, name: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        line = data.count(b"\n", 0, exc.start) + 1
        col = len(data[line_start:exc.start].decode("utf-8", errors="replace")) + 1
        raise PolicyError([Issue(name, line, col, "",
                                 f"not UTF-8: invalid byte 0x{data[exc.start]:02x}")]) from None
    return text.removeprefix("\ufeff")  # a UTF-8 byte order mark is harmless


def _compose_single(text: str, noun: str) -> Node | None:
    """The one document's node graph (None for an empty stream)."""
    loader = PolicyLoader(text)
    try:
        loader.get_event()  # StreamStartEvent
        if loader.check_event(yaml.StreamEndEvent):
            return None
        node: Node | None = loader.compose_document()
        if not loader.check_event(yaml.StreamEndEvent):
            mark = loader.peek_event().start_mark
            raise _LoaderIssue(mark, f"a {noun} holds exactly one YAML document; found a second "
                                     "one")
        return node
    finally:
        loader.dispose()


def _syntax_issue(name: str, exc: yaml.MarkedYAMLError) -> Issue:
    mark = exc.problem_mark or exc.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    problem = exc.problem or "malformed YAML"
    if "'\\t'" in problem:
        return Issue(name, line, col, "", "invalid YAML: tab characters cannot indent YAML; "
                                          "use spaces")
    if problem.startswith(("found character '@'", "found character '`'")):
        return Issue(name, line, col, "", f"invalid YAML: {problem[16:19]} cannot start a plain "
                                          "value; quote it")
    message = f"invalid YAML: {problem}"
    cmark = exc.context_mark
    if exc.context and cmark is not None and (cmark.line, cmark.column) != (line - 1, col - 1):
        message += f" ({exc.context} at {cmark.line + 1}:{cmark.column + 1})"
    return Issue(name, line, col, "", printable(message, limit=200))


def _offset_position(text: str, offset: int) -> Position:
    line_start = text.rfind("\n", 0, offset) + 1
    return text.count("\n", 0, offset) + 1, offset - line_start + 1


def _check_expansion(root: Node) -> None:
    """Refuse recursive aliases and documents that expand past MAX_NODES or MAX_DEPTH.

    Sizes are memoised per node, so a shared subtree is measured once: the cost is linear in the
    size of the file even when its expansion is exponential.
    """
    sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded node count, expanded height)
    active: set[int] = set()

    def measure(node: Node) -> tuple[int, int]:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in active:
            raise _LoaderIssue(node.start_mark, "an alias refers to a node that contains it")
        active.add(id(node))
        count, height = 1, 1
        for child in _children(node):
            c, h = measure(child)
            count, height = count + c, max(height, h + 1)
            if count > MAX_NODES:
                raise _LoaderIssue(child.start_mark,
                                   f"the document expands to more than {MAX_NODES} YAML nodes "
                                   "(aliases are counted expanded)")
            if height > MAX_DEPTH:
                raise _LoaderIssue(child.start_mark, f"nesting deeper than {MAX_DEPTH} levels")
        active.discard(id(node))
        sizes[id(node)] = (count, height)
        return count, height

    measure(root)


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _short_tag(tag: str) -> str:
    return "!!" + tag[len(_CORE):] if tag.startswith(_CORE) else tag


class _Builder:
    """Turns the checked node graph into plain data, recording positions and collecting issues."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.positions = Positions()
        self.issues: list[Issue] = []
        self._constructor = yaml.SafeLoader("")  # only its scalar constructors are used

    def issue(self, node: Node, path: Path, message: str) -> None:
        mark = node.start_mark
        self.issues.append(Issue(self.name, mark.line + 1, mark.column + 1, format_key(path),
                                 message))

    def build(self, node: Node, path: Path) -> Any:
        self.positions.values[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, MappingNode):
            return self._mapping(node, path)
        if isinstance(node, SequenceNode):
            if node.tag != _SEQ_TAG:
                return self._unsupported(node, path)
            return [self.build(child, (*path, i)) for i, child in enumerate(node.value)]
        return self._scalar(node, path)

    def _unsupported(self, node: Node, path: Path) -> None:
        self.issue(node, path, f"unsupported YAML tag '{printable(_short_tag(node.tag))}' "
                               "(only plain strings, numbers, booleans, lists and mappings)")
        return None

    def _scalar(self, node: Node, path: Path) -> Any:
        if node.tag not in _SCALAR_TAGS:
            return self._unsupported(node, path)
        try:
            return self._constructor.yaml_constructors[node.tag](self._constructor, node)
        except Exception:  # only the safe core constructors run here; `!!int abc` and the like
            self.issue(node, path, f"cannot read {printable(repr(node.value))} as "
                                   f"{_short_tag(node.tag)}")
            return None

    def _mapping(self, node: MappingNode, path: Path) -> Any:
        if node.tag != _MAP_TAG:
            return self._unsupported(node, path)
        result: dict[str, Any] = {}
        explicit: list[tuple[Node, Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                self._merge(value_node, path, result)
            else:
                explicit.append((key_node, value_node))
        seen: dict[str, Node] = {}
        for key_node, value_node in explicit:
            key = self._key(key_node, path)
            if key is None:
                continue
            if key in seen:
                first = seen[key].start_mark
                self.issue(key_node, (*path, key),
                           f"duplicate key '{printable(key)}' (first defined at line "
                           f"{first.line + 1})")
                continue
            seen[key] = key_node
            self.positions.keys[(*path, key)] = (key_node.start_mark.line + 1,
                                                 key_node.start_mark.column + 1)
            result[key] = self.build(value_node, (*path, key))
        return result

    def _key(self, node: Node, path: Path) -> str | None:
        if not isinstance(node, ScalarNode):
            self.issue(node, path, "keys must be plain strings, not lists or mappings")
            return None
        if node.tag != _STR_TAG:
            self.issue(node, (*path, node.value),
                       f"key {printable(node.value)} is not a string; quote it: "
                       f"\"{printable(node.value)}\"")
            return None
        return str(node.value)

    def _merge(self, value: Node, path: Path, into: dict[str, Any]) -> None:
        """`<<: *base` or `<<: [*a, *b]`: keys not already present are copied in (YAML 1.1)."""
        sources = value.value if isinstance(value, SequenceNode) else [value]
        for source in sources:
            if not isinstance(source, MappingNode):
                self.issue(source, path, "a merge key ('<<') needs a mapping or a list of "
                                         "mappings")
                continue
            here = self.positions.values[path]
            merged = self.build(source, path)
            self.positions.values[path] = here  # building the source recorded its own position
            if isinstance(merged, dict):
                for key, item in merged.items():
                    into.setdefault(key, item)
