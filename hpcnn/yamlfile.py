"""The one way hpcnn reads a YAML file a user hands it (cluster.yaml, labels.yaml), bounded.

A YAML file is untrusted input: a few lines of anchors and aliases (``&a [*a, *a, ...]``, the
"billion laughs") describe a structure of billions of nodes that PyYAML builds as shared
references in no time, but that any code walking it (printing a name, validating a list) expands
until memory runs out. So every file is read here, with three bounds checked before anything
uses the data: its size on disk, the number of nodes it holds once aliases are expanded, and its
depth (PyYAML composes recursively). The node tree is returned with the data so that error
messages can name the line of a key.

Numbers follow YAML 1.2, not PyYAML's 1.1: ``5:00:00`` is the text of a walltime, not the
sexagesimal integer 18000 (1.1 reads ``1:30`` as 90), so a value reads the same whether or not
the user quotes it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from hpcnn.errors import ConfigError, HpcnnError

MAX_BYTES = 1 << 20
"""A cluster.yaml or labels.yaml is a few kB; anything this large is not one."""
MAX_NODES = 100_000
"""Scalars, lists and mappings once every alias is expanded: far above any real file."""

_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"


class _Loader(yaml.SafeLoader):
    """SafeLoader without YAML 1.1's base-60 numbers."""

    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag not in (_INT, _FLOAT)]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


_Loader.add_implicit_resolver(
    _INT, re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)"
                     r"|[-+]?0x[0-9a-fA-F_]+)$"), list("-+0123456789"))
_Loader.add_implicit_resolver(
    _FLOAT, re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?"
                       r"|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
                       r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"), list("-+0123456789."))


def read_yaml(path: Path, error: type[HpcnnError] = ConfigError) -> tuple[Any, yaml.Node | None]:
    """The data of one YAML document and its node tree (None for an empty file). Every problem
    raises ``error`` naming the file (and the line, where YAML says it)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror}") from exc
    if len(raw) > MAX_BYTES:
        raise error(f"{path}: larger than {MAX_BYTES >> 20} MiB: not a configuration file",
                    hint="give the right file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text (byte {exc.start})",
                    hint="save it as UTF-8 text") from exc
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, None
        _bound(path, root, error)
        return loader.construct_document(root), root
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise error(f"{where}: YAML syntax error: {problem}") from exc
    except RecursionError:
        raise error(f"{path}: nested too deeply to be a configuration file",
                    hint="give the right file") from None
    finally:
        loader.dispose()


def _bound(path: Path, root: yaml.Node, error: type[HpcnnError]) -> None:
    """Count the nodes of the tree with every alias expanded, without expanding it: each
    distinct node once, its size the sum of its children's. A node inside itself (``&a [*a]``)
    would be infinite."""
    size: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    open_: set[int] = set()  # on the current path
    while stack:
        node, children_done = stack.pop()
        children = _children(node)
        if children_done:
            open_.discard(id(node))
            size[id(node)] = 1 + sum(size[id(c)] for c in children)
            if size[id(node)] > MAX_NODES:
                line = node.start_mark.line + 1
                raise error(f"{path}:{line}: its aliases (*name) expand to more than "
                            f"{MAX_NODES:,} values: refused (a YAML alias bomb?)",
                            hint="write the values out instead of nesting aliases")
            continue
        if id(node) in size:
            continue
        if id(node) in open_:
            raise error(f"{path}:{node.start_mark.line + 1}: an alias refers to the list or "
                        "mapping that holds it, which never ends", hint="remove that alias")
        open_.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in size)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []
