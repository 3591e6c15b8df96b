"""VNN-LIB properties in and out, and the VNN-COMP result format.

A VNN-LIB file (the property format of the VNN-COMP verification competition, a subset of
SMT-LIB 2) declares the network's inputs ``X_0 … X_{n−1}`` and outputs ``Y_0 … Y_{K−1}`` and
asserts linear constraints on them; a verifier answers "sat" when some x satisfies all of them
with y = f(x) (a counterexample), "unsat" when none does::

    (declare-const X_0 Real)
    (declare-const Y_0 Real)
    (declare-const Y_1 Real)
    (assert (>= X_0 -0.5))
    (assert (<= X_0 0.5))
    (assert (or (and (<= Y_0 Y_1)) (and (>= Y_0 3.9))))

``read_vnnlib`` brings the conjunction of all asserts into disjunctive normal form, each
conjunct an input box (bounds on single variables) and linear output constraints a·y ≤ b,
and returns one ``Property(lower, upper, disjuncts)`` per distinct input box, its disjuncts the
output polyhedra {y : A·y ≤ b} paired with that box. The file is sat iff one of them is.
Terms may be numbers, variables, ``(+ …)``, ``(- …)``, ``(* c t)`` and ``(/ t c)``; a strict
``<``/``>`` is read as its closure ``≤``/``≥`` (as the competition's tools do), ``=`` as both.

``write_vnnlib`` writes properties back (reading the text gives the same properties exactly:
numbers are written as their shortest round-trip decimal); ``robustness_property`` builds the
MNIST/CIFAR-style one (an L∞ ball ∩ box around x, unsafe: any class other than the label scores
at least as high). ``write_counterexample``/``write_result`` produce the VNN-COMP result file
(``sat`` then ``((X_0 v) … (Y_0 v) …)``, or ``unsat``/``unknown``/``timeout``/``error``) and
``read_counterexample`` reads one.
"""

from __future__ import annotations

import gzip
import itertools
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import numpy as np
import torch
from torch import Tensor

from advex.certify.spec import Halfspaces, Property, misclassification

__all__ = [
    "STATUSES",
    "read_counterexample",
    "read_vnnlib",
    "robustness_property",
    "write_counterexample",
    "write_result",
    "write_vnnlib",
]

STATUSES = ("sat", "unsat", "unknown", "timeout", "error")

_MAX_CONJUNCTS = 100_000


# ---------------------------------------------------------------------------------------------
# Tokens and s-expressions.


@dataclass(frozen=True)
class _Atom:
    text: str
    line: int


@dataclass(frozen=True)
class _Form:
    items: tuple[_Node, ...]
    line: int


_Node: TypeAlias = _Atom | _Form

_TOKEN = re.compile(r"\s+|;[^\n]*|\(|\)|[^\s();]+")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_VARIABLE = re.compile(r"([XY])_(\d+)")


def _show(node: _Node, limit: int = 80) -> str:
    """The s-expression as text, cut to ``limit`` characters."""
    text = (
        node.text
        if isinstance(node, _Atom)
        else f"({' '.join(_show(i, limit) for i in node.items)})"
    )
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fail(node: _Node, problem: str, where: _Node | None = None) -> ValueError:
    """The error for ``node``'s line, showing the form ``where`` (default: the node)."""
    return ValueError(f"vnnlib line {node.line}: {problem} in {_show(where or node)}")


def _tokens(text: str) -> Iterator[tuple[str, int]]:
    line = 1
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token[0] not in " \t\r\n\f\v;":
            yield token, line
        line += token.count("\n")


def _parse(text: str) -> list[_Node]:
    """Top-level s-expressions of ``text``; comments (``;`` to the end of a line) dropped."""
    stack: list[tuple[list[_Node], int]] = [([], 0)]
    for token, line in _tokens(text):
        if token == "(":
            stack.append(([], line))
        elif token == ")":
            if len(stack) == 1:
                raise ValueError(f"vnnlib line {line}: unexpected ')'")
            items, start = stack.pop()
            stack[-1][0].append(_Form(tuple(items), start))
        else:
            stack[-1][0].append(_Atom(token, line))
    if len(stack) > 1:
        raise ValueError(f"vnnlib line {stack[-1][1]}: '(' is never closed")
    return stack[0][0]


def _head(form: _Node) -> str:
    if isinstance(form, _Form) and form.items and isinstance(form.items[0], _Atom):
        return form.items[0].text
    return ""


def _number(node: _Node) -> float | None:
    if isinstance(node, _Atom) and _NUMBER.fullmatch(node.text):
        return float(node.text)
    return None


# ---------------------------------------------------------------------------------------------
# Linear terms and constraints.

_Linear: TypeAlias = tuple[dict[str, float], float]  # Σ coef·var + const


@dataclass(frozen=True)
class _Constraint:
    """Σ coefs[v]·v + const ≤ 0, from ``form``."""

    coefs: dict[str, float]
    const: float
    form: _Node


def _term(node: _Node, names: set[str], where: _Node) -> _Linear:
    """The linear term ``node`` inside the comparison ``where`` (shown in errors)."""
    value = _number(node)
    if value is not None:
        return {}, value
    if isinstance(node, _Atom):
        if node.text not in names:
            raise _fail(node, f"undeclared variable {node.text}", where)
        return {node.text: 1.0}, 0.0
    op, args = _head(node), [_term(a, names, where) for a in node.items[1:]]
    if op == "+" and args:
        return _sum(args)
    if op == "-" and len(args) == 1:
        return _scaled(args[0], -1.0)
    if op == "-" and len(args) > 1:
        return _sum([args[0], *(_scaled(a, -1.0) for a in args[1:])])
    if op == "*" and args:
        variable = [a for a in args if a[0]]
        if len(variable) > 1:
            raise _fail(node, "a product of variables is not linear", where)
        factor = float(np.prod([a[1] for a in args if not a[0]]))
        return _scaled(variable[0], factor) if variable else ({}, factor)
    if op == "/" and len(args) == 2 and not args[1][0] and args[1][1] != 0:
        d = args[1][1]
        return {name: a / d for name, a in args[0][0].items()}, args[0][1] / d
    raise _fail(node, "expected a number, a variable or a linear term (+ - * /)", where)


def _sum(terms: Sequence[_Linear]) -> _Linear:
    coefs: dict[str, float] = {}
    for c, _ in terms:
        for name, a in c.items():
            coefs[name] = coefs.get(name, 0.0) + a
    return coefs, sum(k for _, k in terms)


def _scaled(term: _Linear, factor: float) -> _Linear:
    return {name: factor * a for name, a in term[0].items()}, factor * term[1]


# For each comparison, the (smaller, larger) operand positions of the "≤ 0" constraints it means.
_ORDER = {
    "<=": ((0, 1),),
    "<": ((0, 1),),
    ">=": ((1, 0),),
    ">": ((1, 0),),
    "=": ((0, 1), (1, 0)),
}


def _comparison(form: _Form, names: set[str]) -> list[_Constraint]:
    """``(<= a b …)`` and friends as constraints ``… ≤ 0`` (chains compare neighbours)."""
    op, terms = _head(form), [_term(a, names, form) for a in form.items[1:]]
    if len(terms) < 2:
        raise _fail(form, f"{op} needs at least two operands")
    out = []
    for pair in itertools.pairwise(terms):
        for small, large in _ORDER[op]:
            coefs, const = _sum([pair[small], _scaled(pair[large], -1.0)])
            out.append(_Constraint(coefs, const, form))
    return out


def _dnf(form: _Node, names: set[str]) -> list[list[_Constraint]]:
    """The formula as a disjunction (outer list) of conjunctions of constraints."""
    op = _head(form)
    if not isinstance(form, _Form) or not op:
        raise _fail(form, "expected a formula (and, or, <=, >=, <, >, =)")
    if op in _ORDER:
        return [_comparison(form, names)]
    parts = [_dnf(a, names) for a in form.items[1:]]
    if op == "or":
        return [conj for part in parts for conj in part]
    if op == "and":
        base, extras = _product(parts, form)
        return [base + extra for extra in extras]
    raise _fail(form, f"unsupported operator {op!r} (expected and, or or a comparison)")


def _product(
    parts: list[list[list[_Constraint]]], form: _Node
) -> tuple[list[_Constraint], list[list[_Constraint]]]:
    """(∨ A_i) ∧ (∨ B_j) ∧ … = ∨ (A_i ∧ B_j ∧ …) as (the constraints every conjunct shares:
    those of single-conjunct parts, the rest of each conjunct)."""
    base = [c for part in parts if len(part) == 1 for c in part[0]]
    choices = [part for part in parts if len(part) != 1]
    if float(np.prod([len(p) for p in choices], dtype=np.float64)) > _MAX_CONJUNCTS:
        raise _fail(form, f"more than {_MAX_CONJUNCTS} conjuncts in disjunctive normal form")
    extras = [[c for conj in pick for c in conj] for pick in itertools.product(*choices)]
    return base, extras


# ---------------------------------------------------------------------------------------------
# Reading.


def _source(source: str | os.PathLike[str]) -> str:
    """Text of a file (path; ``.gz`` decompressed) or the text itself (a string with '(')."""
    if isinstance(source, str) and ("(" in source or "\n" in source):
        return source
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source: expected a path or VNN-LIB text, got {type(source).__name__}")
    path = Path(source)
    if path.suffix == ".gz":
        with gzip.open(path, "rt") as f:
            return f.read()
    return path.read_text()


def _declarations(forms: list[_Node]) -> tuple[list[str], list[str], list[_Form]]:
    inputs: dict[int, str] = {}
    outputs: dict[int, str] = {}
    asserts: list[_Form] = []
    for form in forms:
        head = _head(form)
        if not isinstance(form, _Form):
            raise _fail(form, "expected a (declare-const …) or (assert …) form")
        if head == "declare-const":
            if len(form.items) != 3 or _show(form.items[2]) != "Real":
                raise _fail(form, "expected (declare-const NAME Real)")
            name = _show(form.items[1])
            match = _VARIABLE.fullmatch(name)
            if match is None:
                raise _fail(form, f"variable {name}: names must be X_<i> or Y_<j>")
            table = inputs if match.group(1) == "X" else outputs
            if int(match.group(2)) in table:
                raise _fail(form, f"{name} is declared twice")
            table[int(match.group(2))] = name
        elif head == "assert":
            if len(form.items) != 2:
                raise _fail(form, "assert takes one formula")
            asserts.append(form)
        elif head not in ("set-logic", "set-info", "set-option", "check-sat", "get-model", "exit"):
            raise _fail(form, f"unsupported command {head or _show(form)!r}")
    for letter, table in (("X", inputs), ("Y", outputs)):
        if sorted(table) != list(range(len(table))):
            missing = min(set(range(len(table) + 1)) - set(table))
            raise ValueError(f"vnnlib: {letter}_{missing} is not declared")
    return (
        [inputs[i] for i in range(len(inputs))],
        [outputs[j] for j in range(len(outputs))],
        asserts,
    )


def read_vnnlib(
    source: str | os.PathLike[str],
    num_inputs: int | None = None,
    num_outputs: int | None = None,
) -> list[Property]:
    """The properties of a VNN-LIB file: one ``Property`` per distinct input box, in order of
    first appearance; the file is sat iff one of them is. An empty list means no input box is
    feasible (trivially unsat). Inputs without a bound get ±inf.

    Args:
        source: a path (``.gz`` is decompressed) or the text itself (a string with '(').
        num_inputs, num_outputs: the network's input and output sizes, checked against the
            declarations when given.

    Raises:
        ValueError: naming the line and the form of a syntax error, an undeclared variable, a
            nonlinear term, input constraints other than bounds, constraints mixing inputs and
            outputs, or declarations that disagree with ``num_inputs``/``num_outputs``.
    """
    forms = _parse(_source(source))
    xs, ys, asserts = _declarations(forms)
    for name, declared, given in (
        ("num_inputs", len(xs), num_inputs),
        ("num_outputs", len(ys), num_outputs),
    ):
        if given is not None and declared != given:
            raise ValueError(f"{name}: the file declares {declared} variables, expected {given}")
    if not xs or not ys:
        raise ValueError("vnnlib: needs at least one X_ and one Y_ variable")
    names = set(xs) | set(ys)
    parts = [_dnf(form.items[1], names) for form in asserts]
    base, extras = _product(parts, asserts[0] if asserts else _Atom("", 0))
    index = {name: i for i, name in enumerate(xs)} | {name: j for j, name in enumerate(ys)}
    shared = _Region([-np.inf] * len(xs), [np.inf] * len(xs), [], [])
    shared.add(base, index)
    groups: dict[tuple[bytes, bytes], tuple[Tensor, Tensor, list[Halfspaces]]] = {}
    for extra in extras:
        region = shared.copy()
        region.add(extra, index)
        if region.empty:
            continue
        lo = torch.tensor(region.lower, dtype=torch.float64)
        hi = torch.tensor(region.upper, dtype=torch.float64)
        key = (lo.numpy().tobytes(), hi.numpy().tobytes())
        groups.setdefault(key, (lo, hi, []))[2].append(region.halfspaces(len(ys)))
    return [Property(lo, hi, tuple(halves)) for lo, hi, halves in groups.values()]


@dataclass
class _Region:
    """One conjunct being collected: the input box and the output rows a·y ≤ b."""

    lower: list[float]
    upper: list[float]
    rows: list[dict[int, float]]
    rhs: list[float]
    empty: bool = False

    def copy(self) -> _Region:
        return _Region(self.lower[:], self.upper[:], self.rows[:], self.rhs[:], self.empty)

    def add(self, constraints: list[_Constraint], index: dict[str, int]) -> None:
        for c in constraints:
            inputs = [v for v, a in c.coefs.items() if v[0] == "X" and a != 0]
            outputs = [v for v in c.coefs if v[0] == "Y"]
            if inputs and outputs:
                raise _fail(c.form, "a constraint mixes inputs and outputs")
            if len(inputs) > 1:
                raise _fail(c.form, "input constraints must bound single variables (a box)")
            if inputs:
                i, a = index[inputs[0]], c.coefs[inputs[0]]
                if a > 0:
                    self.upper[i] = min(self.upper[i], -c.const / a)
                else:
                    self.lower[i] = max(self.lower[i], -c.const / a)
                self.empty |= self.lower[i] > self.upper[i]
            elif outputs:
                self.rows.append({index[v]: c.coefs[v] for v in outputs})
                self.rhs.append(0.0 - c.const)
            else:  # a constant constraint: false ones empty the conjunct
                self.empty |= c.const > 0

    def halfspaces(self, k: int) -> Halfspaces:
        a = torch.zeros(len(self.rows), k, dtype=torch.float64)
        for r, row in enumerate(self.rows):
            for j, coef in row.items():
                a[r, j] = coef
        return Halfspaces(a, torch.tensor(self.rhs, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------
# Writing.


def _num(v: float) -> str:
    """The shortest decimal that reads back to the same float64, without an exponent."""
    return np.format_float_positional(float(v), unique=True, trim="0")


def _row(a: Tensor, b: float) -> str:
    """a·Y ≤ b in the plainest form that reads back to exactly (a, b)."""
    nonzero = [int(j) for j in torch.nonzero(a).reshape(-1)]
    coefs = [float(a[j]) for j in nonzero]
    if coefs == [1.0]:
        return f"(<= Y_{nonzero[0]} {_num(b)})"
    if coefs == [-1.0]:
        return f"(>= Y_{nonzero[0]} {_num(0.0 - b)})"
    if sorted(coefs) == [-1.0, 1.0] and b == 0:
        small, large = nonzero if coefs[0] == 1.0 else nonzero[::-1]
        return f"(<= Y_{small} Y_{large})"
    terms = " ".join(f"(* {_num(float(a[j]))} Y_{j})" for j in range(a.numel()) if j in nonzero)
    if not nonzero:
        terms = "(* 0.0 Y_0)"
    return f"(<= (+ {terms}) {_num(b)})"


def _box(prop: Property) -> list[str]:
    out = []
    for i, (lo, hi) in enumerate(zip(prop.lower.tolist(), prop.upper.tolist(), strict=True)):
        if lo != -np.inf:
            out.append(f"(>= X_{i} {_num(lo)})")
        if hi != np.inf:
            out.append(f"(<= X_{i} {_num(hi)})")
    return out


def _rows(half: Halfspaces) -> list[str]:
    return [_row(a, float(b)) for a, b in zip(half.A, half.b, strict=True)]


def write_vnnlib(
    prop: Property | Sequence[Property], path: str | os.PathLike[str] | None = None
) -> str:
    """VNN-LIB text for one property (or several, sat iff one is), written to ``path`` when
    given. One property: its box and, for a single disjunct, one assert per output row, else
    ``(assert (or (and …) …))``; several: ``(assert (or (and box rows) …))`` over every box and
    disjunct. ``read_vnnlib`` of the text gives the same properties (several with one and the
    same box come back as one).

    Raises:
        ValueError: no property, or properties of different input or output sizes.
    """
    props = [prop] if isinstance(prop, Property) else list(prop)
    if not props or not all(isinstance(p, Property) for p in props):
        raise ValueError("prop: expected a Property or a non-empty sequence of them")
    n = props[0].lower.numel()
    k = int(props[0].disjuncts[0].A.shape[1])
    for p in props:
        if p.lower.numel() != n or any(int(d.A.shape[1]) != k for d in p.disjuncts):
            raise ValueError(f"prop: every property needs {n} inputs and {k} outputs")
    lines = ["; VNN-LIB property written by advex"]
    lines += [f"(declare-const X_{i} Real)" for i in range(n)]
    lines += [f"(declare-const Y_{j} Real)" for j in range(k)]
    if len(props) == 1:
        lines += [f"(assert {c})" for c in _box(props[0])]
        disjuncts = props[0].disjuncts
        if len(disjuncts) == 1:
            lines += [f"(assert {r})" for r in _rows(disjuncts[0])]
        else:
            lines += _or([_rows(d) for d in disjuncts])
    else:
        lines += _or([_box(p) + _rows(d) for p in props for d in p.disjuncts])
    text = "\n".join(lines) + "\n"
    if path is not None:
        Path(path).write_text(text)
    return text


def _or(conjunctions: list[list[str]]) -> list[str]:
    body = ["    (and" + "".join(f" {c}" for c in conj) + ")" for conj in conjunctions]
    return ["(assert (or", *body, "))"]


def robustness_property(
    x: Tensor,
    eps: float,
    label: int,
    num_classes: int,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> Property:
    """The local robustness property of one input ``x`` (any shape, flattened): inputs
    max(lo, x − ε) ≤ x' ≤ min(hi, x + ε); unsafe outputs: y_label − y_j ≤ 0 for some j ≠ label.

    Raises:
        ValueError: non-finite x, negative or non-finite eps, label out of range, fewer than
            two classes, or bounds with lo ≥ hi.
    """
    center = torch.as_tensor(x, dtype=torch.float64).detach().cpu().reshape(-1)
    if not bool(torch.isfinite(center).all()):
        raise ValueError("x: contains NaN or Inf")
    if not (np.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps: expected a finite number >= 0, got {eps}")
    if num_classes < 2:
        raise ValueError(f"num_classes: expected at least 2, got {num_classes}")
    if not 0 <= label < num_classes:
        raise ValueError(f"label: expected 0 <= label < {num_classes}, got {label}")
    lo, hi = float(bounds[0]), float(bounds[1])
    if not lo < hi:
        raise ValueError(f"bounds: expected lo < hi, got {bounds}")
    lower = (center - eps).clamp(lo, hi)
    upper = (center + eps).clamp(lo, hi)
    return Property(lower, upper, misclassification(label, num_classes))


# ---------------------------------------------------------------------------------------------
# Results.


def _values(v: Tensor, what: str) -> list[float]:
    flat = torch.as_tensor(v).detach().cpu().to(torch.float64).reshape(-1)
    if not bool(torch.isfinite(flat).all()):
        raise ValueError(f"{what}: contains NaN or Inf")
    return flat.tolist()


def write_counterexample(x: Tensor, y: Tensor, path: str | os.PathLike[str] | None = None) -> str:
    """The VNN-COMP result for a counterexample: ``sat``, then ``((X_0 v)`` … ``(Y_{K−1} v))``
    one pair per line, every value the shortest decimal of its float64. ``x`` and ``y`` (one
    sample, any shape) are flattened. Written to ``path`` when given.

    Raises:
        ValueError: x or y contains NaN or Inf.
    """
    pairs = [f"(X_{i} {_num(v)})" for i, v in enumerate(_values(x, "x"))]
    pairs += [f"(Y_{j} {_num(v)})" for j, v in enumerate(_values(y, "y"))]
    text = "sat\n(" + "\n ".join(pairs) + ")\n"
    if path is not None:
        Path(path).write_text(text)
    return text


def write_result(
    status: str,
    path: str | os.PathLike[str] | None = None,
    *,
    x: Tensor | None = None,
    y: Tensor | None = None,
) -> str:
    """A VNN-COMP result file: ``unsat``, ``unknown``, ``timeout`` or ``error`` on one line, or
    for ``sat`` the counterexample (``x`` and ``y`` required; see ``write_counterexample``).

    Raises:
        ValueError: unknown status, sat without x and y, or x/y given for another status.
    """
    if status not in STATUSES:
        raise ValueError(f"status: expected one of {', '.join(STATUSES)}, got {status!r}")
    if status == "sat":
        if x is None or y is None:
            raise ValueError("x, y: a sat result needs the counterexample")
        return write_counterexample(x, y, path)
    if x is not None or y is not None:
        raise ValueError(f"x, y: only a sat result carries a counterexample, not {status}")
    text = f"{status}\n"
    if path is not None:
        Path(path).write_text(text)
    return text


def read_counterexample(source: str | os.PathLike[str]) -> tuple[str, Tensor | None, Tensor | None]:
    """(status, x, y) of a VNN-COMP result (text, or a ``Path``); x and y are float64 vectors
    for ``sat`` and None otherwise. The 2021 words ``violated``/``holds`` read as sat/unsat.

    Raises:
        ValueError: naming the problem: unknown status, malformed or incomplete assignment.
    """
    text = Path(source).read_text() if isinstance(source, os.PathLike) else source
    status, _, rest = text.strip().partition("\n")
    status = {"violated": "sat", "holds": "unsat"}.get(
        status.strip().lower(), status.strip().lower()
    )
    if status not in STATUSES:
        raise ValueError(f"result: unknown status {status!r} on line 1")
    if status != "sat":
        return status, None, None
    forms = _parse("\n" + rest)
    if len(forms) != 1 or not isinstance(forms[0], _Form):
        raise ValueError("result: expected one ((X_0 v) ... (Y_0 v) ...) list after sat")
    values: dict[str, dict[int, float]] = {"X": {}, "Y": {}}
    for pair in forms[0].items:
        value = _number(pair.items[1]) if isinstance(pair, _Form) and len(pair.items) == 2 else None
        match = _VARIABLE.fullmatch(_show(pair.items[0])) if isinstance(pair, _Form) else None
        if value is None or match is None:
            raise _fail(pair, "expected (X_i value) or (Y_j value)")
        values[match.group(1)][int(match.group(2))] = value
    x, y = (_vector(values[k], k) for k in ("X", "Y"))
    return status, x, y


def _vector(values: dict[int, float], letter: str) -> Tensor:
    if sorted(values) != list(range(len(values))) or not values:
        raise ValueError(f"result: the {letter}_ values are not numbered 0..n-1")
    return torch.tensor([values[i] for i in range(len(values))], dtype=torch.float64)
