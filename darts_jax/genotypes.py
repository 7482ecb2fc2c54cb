"""Genotypes: the discrete cell found by a search, in pt.darts's text format.

A genotype names, for every intermediate node of a normal and a reduction
cell, the (op, input) pairs feeding it. Input 0 is c_{k-2}, 1 is c_{k-1} and
2.. are earlier nodes of the same cell. This module parses genotype text
without executing it (pt.darts uses ``eval``), prints it byte for byte as
pt.darts does, and derives a genotype from architecture weights.

It imports nothing from the model code, so it stays cheap to import.
"""

from __future__ import annotations

import ast
import os
import re
from collections import namedtuple
from collections.abc import Mapping, Sequence

import numpy as np

# Column j of an alpha matrix is PRIMITIVES[j] (pt.darts order, `none` last).
PRIMITIVES = (
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
    "none",
)
# The official DARTS code puts `none` first; importing its alphas permutes columns.
OFFICIAL_PRIMITIVES = ("none",) + PRIMITIVES[:-1]

Genotype = namedtuple("Genotype", "normal normal_concat reduce reduce_concat")

_MAX_TEXT_CHARS = 20_000  # a real genotype is ~600 characters
_FIELDS = Genotype._fields


def _err(msg: str) -> ValueError:
    return ValueError(f"invalid genotype: {msg}")


def _int(node: ast.AST, what: str) -> int:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    raise _err(f"{what} must be an integer literal, got {ast.unparse(node)[:60]!r}")


def _edge(node: ast.AST) -> tuple[str, int]:
    if not (isinstance(node, ast.Tuple) and len(node.elts) == 2):
        raise _err(f"an edge must be a tuple (op, input), got {ast.unparse(node)[:60]!r}")
    op_node, idx_node = node.elts
    if not (isinstance(op_node, ast.Constant) and isinstance(op_node.value, str)):
        raise _err(f"an op name must be a string literal, got {ast.unparse(op_node)[:60]!r}")
    if op_node.value not in PRIMITIVES:
        raise _err(f"unknown op {op_node.value!r}; known ops: {', '.join(PRIMITIVES)}")
    return (op_node.value, _int(idx_node, "an edge input"))


def _cell(node: ast.AST, field: str) -> list[list[tuple[str, int]]]:
    """Parses the nested (pt.darts) or the flat (official, two per node) form."""
    if not isinstance(node, ast.List) or not node.elts:
        raise _err(f"{field} must be a non-empty list")
    if all(isinstance(e, ast.List) for e in node.elts):
        nodes = [[_edge(e) for e in n.elts] for n in node.elts]
    elif all(isinstance(e, ast.Tuple) for e in node.elts):
        edges = [_edge(e) for e in node.elts]
        if len(edges) % 2:
            raise _err(f"the flat form of {field} needs two edges per node, got {len(edges)} edges")
        nodes = [edges[i : i + 2] for i in range(0, len(edges), 2)]
    else:
        raise _err(f"{field} mixes nodes (lists) and edges (tuples)")
    for i, edges in enumerate(nodes):
        if not edges:
            raise _err(f"{field} node {i} has no input edge")
        for op, idx in edges:
            if not 0 <= idx < i + 2:
                raise _err(
                    f"{field} node {i} takes input {idx} ({op}); valid inputs are 0..{i + 1}"
                )
    return nodes


def _concat(node: ast.AST, field: str) -> range | list[int]:
    if isinstance(node, ast.Call):
        if not (isinstance(node.func, ast.Name) and node.func.id == "range") or node.keywords:
            raise _err(f"{field} must be range(a, b) or a list of integers")
        args = [_int(a, f"{field} bound") for a in node.args]
        if len(args) != 2:
            raise _err(f"{field} must be range(a, b) with two arguments")
        return range(*args)
    if isinstance(node, ast.List | ast.Tuple):
        return [_int(e, f"{field} entry") for e in node.elts]
    raise _err(f"{field} must be range(a, b) or a list of integers")


def _normalize_concat(concat: Sequence[int]) -> range | list[int]:
    """Contiguous concats are stored as ranges so both text forms compare equal."""
    values = list(concat)
    if values and values == list(range(values[0], values[-1] + 1)):
        return range(values[0], values[-1] + 1)
    return values


def validate(genotype: Genotype) -> Genotype:
    """Checks node counts and concat indices; returns the genotype normalised."""
    if len(genotype.normal) != len(genotype.reduce):
        raise _err(f"normal has {len(genotype.normal)} nodes but reduce has {len(genotype.reduce)}")
    fields = {}
    for name in ("normal", "reduce"):
        nodes = [list(map(tuple, n)) for n in getattr(genotype, name)]
        concat = _normalize_concat(getattr(genotype, f"{name}_concat"))
        n_states = len(nodes) + 2
        if not len(concat) or any(not 0 <= c < n_states for c in concat):
            raise _err(f"{name}_concat {list(concat)} must name states in 0..{n_states - 1}")
        fields[name], fields[f"{name}_concat"] = nodes, concat
    return Genotype(**fields)


def from_str(text: str) -> Genotype:
    """Parses genotype text (pt.darts nested or official flat form) without executing it.

    Raises ValueError naming the problem for anything that is not a genotype.
    """
    if not isinstance(text, str):
        raise TypeError(f"genotype text must be a str, got {type(text).__name__}")
    if len(text) > _MAX_TEXT_CHARS:
        raise _err(f"text is {len(text)} characters; a genotype has at most {_MAX_TEXT_CHARS}")
    # Accept `NAME = Genotype(...)` as written in the official genotypes.py.
    body = re.sub(r"^\s*[A-Za-z_]\w*\s*=\s*(?=Genotype\b)", "", text).strip()
    try:
        tree = ast.parse(body, mode="eval")  # parses only; nothing is evaluated
    except (SyntaxError, RecursionError, MemoryError, ValueError) as e:
        raise _err(f"not parseable as Genotype(...): {e}") from None
    call = tree.body
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)):
        raise _err(
            "expected Genotype(normal=..., normal_concat=..., reduce=..., reduce_concat=...)"
        )
    if call.func.id != "Genotype":
        raise _err(f"expected a call of Genotype, got {call.func.id}(...)")
    if call.args and call.keywords:
        raise _err("use either positional or keyword arguments, not both")
    if call.args:
        if len(call.args) != 4:
            raise _err(f"Genotype takes 4 fields, got {len(call.args)}")
        values = dict(zip(_FIELDS, call.args, strict=True))
    else:
        names = [k.arg for k in call.keywords]
        unknown = sorted(set(n or "**" for n in names) - set(_FIELDS))
        if unknown:
            raise _err(f"unknown field(s) {unknown}; fields are {list(_FIELDS)}")
        missing = [f for f in _FIELDS if f not in names]
        if missing or len(names) != len(set(names)):
            raise _err(f"each of {list(_FIELDS)} must be given once (missing: {missing})")
        values = {k.arg: k.value for k in call.keywords}
    return validate(
        Genotype(
            normal=_cell(values["normal"], "normal"),
            normal_concat=_concat(values["normal_concat"], "normal_concat"),
            reduce=_cell(values["reduce"], "reduce"),
            reduce_concat=_concat(values["reduce_concat"], "reduce_concat"),
        )
    )


def _concat_str(concat: range | Sequence[int], flat: bool) -> str:
    if isinstance(concat, range) and not flat:
        return f"range({concat.start}, {concat.stop})"
    return repr(list(concat))


def to_str(genotype: Genotype, flat: bool = False) -> str:
    """Prints pt.darts's text (``str`` of its namedtuple), or the official flat form."""
    genotype = validate(genotype)

    def cell(nodes):
        if flat:
            return repr([tuple(e) for n in nodes for e in n])
        return repr([[tuple(e) for e in n] for n in nodes])

    return (
        f"Genotype(normal={cell(genotype.normal)}, "
        f"normal_concat={_concat_str(genotype.normal_concat, flat)}, "
        f"reduce={cell(genotype.reduce)}, "
        f"reduce_concat={_concat_str(genotype.reduce_concat, flat)})"
    )


def edge_offsets(n_nodes: int) -> list[int]:
    """Row of the first edge of each node in a (n_edges, n_ops) alpha matrix."""
    return [sum(range(2, i + 2)) for i in range(n_nodes)]


def num_edges(n_nodes: int) -> int:
    return sum(range(2, n_nodes + 2))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def derive_cell(alphas_edge_op: np.ndarray, k: int = 2) -> list[list[tuple[str, int]]]:
    """Keeps, per node, the k edges whose best non-`none` op has the largest softmax weight."""
    alphas_edge_op = np.asarray(alphas_edge_op, dtype=np.float64)
    n_edges, n_ops = alphas_edge_op.shape
    if n_ops != len(PRIMITIVES):
        raise ValueError(f"alphas need {len(PRIMITIVES)} op columns, got {n_ops}")
    n_nodes = next((n for n in range(1, 64) if num_edges(n) == n_edges), None)
    if n_nodes is None:
        raise ValueError(f"{n_edges} edge rows match no node count (2+3+...)")
    weights = _softmax(alphas_edge_op)[:, : PRIMITIVES.index("none")]
    nodes = []
    for i, start in enumerate(edge_offsets(n_nodes)):
        w = weights[start : start + i + 2]
        best_op, best_w = w.argmax(axis=1), w.max(axis=1)
        top = np.argsort(-best_w, kind="stable")[:k]
        nodes.append([(PRIMITIVES[best_op[j]], int(j)) for j in top])
    return nodes


def derive(alphas: Mapping[str, np.ndarray], k: int = 2) -> Genotype:
    """Derives the genotype from ``{'normal': (E, 8), 'reduce': (E, 8)}`` alphas."""
    normal = derive_cell(alphas["normal"], k)
    reduce = derive_cell(alphas["reduce"], k)
    concat = range(2, 2 + len(normal))
    return Genotype(normal=normal, normal_concat=concat, reduce=reduce, reduce_concat=concat)


# Official DARTS genotypes (flat form in the official code).
DARTS_V1 = from_str(
    "Genotype(normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 0), "
    "('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
    "('skip_connect', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), "
    "('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 0), ('max_pool_3x3', 0), "
    "('skip_connect', 2), ('skip_connect', 2), ('avg_pool_3x3', 0)], reduce_concat=[2, 3, 4, 5])"
)
DARTS_V2 = from_str(
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
    "('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), "
    "('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), "
    "('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
    "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])"
)
DARTS = DARTS_V2
# Genotypes found by pt.darts (its README).
CIFAR10 = from_str(
    "Genotype(normal=[[('sep_conv_3x3', 0), ('dil_conv_5x5', 1)], [('skip_connect', 0), "
    "('dil_conv_3x3', 2)], [('sep_conv_3x3', 1), ('skip_connect', 0)], [('sep_conv_3x3', 1), "
    "('skip_connect', 0)]], normal_concat=range(2, 6), reduce=[[('max_pool_3x3', 0), "
    "('max_pool_3x3', 1)], [('max_pool_3x3', 0), ('skip_connect', 2)], [('skip_connect', 3), "
    "('max_pool_3x3', 0)], [('skip_connect', 2), ('max_pool_3x3', 0)]], reduce_concat=range(2, 6))"
)
FASHIONMNIST = from_str(
    "Genotype(normal=[[('max_pool_3x3', 0), ('dil_conv_5x5', 1)], [('max_pool_3x3', 0), "
    "('sep_conv_3x3', 1)], [('sep_conv_5x5', 1), ('sep_conv_3x3', 3)], [('sep_conv_5x5', 4), "
    "('dil_conv_5x5', 3)]], normal_concat=range(2, 6), reduce=[[('sep_conv_3x3', 1), "
    "('avg_pool_3x3', 0)], [('avg_pool_3x3', 0), ('skip_connect', 2)], [('skip_connect', 3), "
    "('avg_pool_3x3', 0)], [('sep_conv_3x3', 2), ('skip_connect', 3)]], reduce_concat=range(2, 6))"
)
MNIST = from_str(
    "Genotype(normal=[[('sep_conv_3x3', 0), ('dil_conv_5x5', 1)], [('sep_conv_3x3', 2), "
    "('sep_conv_3x3', 1)], [('dil_conv_5x5', 3), ('sep_conv_3x3', 1)], [('sep_conv_5x5', 4), "
    "('dil_conv_5x5', 3)]], normal_concat=range(2, 6), reduce=[[('dil_conv_3x3', 0), "
    "('sep_conv_3x3', 1)], [('avg_pool_3x3', 0), ('skip_connect', 2)], [('dil_conv_5x5', 3), "
    "('avg_pool_3x3', 0)], [('dil_conv_3x3', 1), ('max_pool_3x3', 0)]], reduce_concat=range(2, 6))"
)
NAMED = {
    "DARTS_V1": DARTS_V1,
    "DARTS_V2": DARTS_V2,
    "DARTS": DARTS_V2,
    "CIFAR10": CIFAR10,
    "MNIST": MNIST,
    "FASHIONMNIST": FASHIONMNIST,
}


def resolve(arg: str) -> Genotype:
    """A genotype from ``--genotype``: its text, a path to a file holding it
    (e.g. ``searchs/<name>/genotype.txt``), or a name in NAMED (any case)."""
    key = arg.strip().upper().replace("-", "_")
    if key in NAMED:
        return NAMED[key]
    if os.path.isfile(arg):
        if os.path.getsize(arg) > _MAX_TEXT_CHARS:
            raise ValueError(f"{arg} is too large to hold a genotype")
        with open(arg, encoding="utf-8") as f:
            try:
                return from_str(f.read())
            except ValueError as e:
                raise ValueError(f"{arg}: {e}") from None
    if "Genotype" in arg:
        return from_str(arg)
    raise ValueError(
        f"--genotype {arg[:80]!r} is neither genotype text, an existing file, "
        f"nor a name ({', '.join(NAMED)})"
    )
