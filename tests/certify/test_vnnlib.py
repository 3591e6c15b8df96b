"""VNN-LIB: the standard property forms read into Properties, written back exactly, errors that
name the line and the form, and the VNN-COMP counterexample format."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import pytest
import torch

from advex.certify.spec import Halfspaces, Property
from advex.certify.vnnlib import (
    read_counterexample,
    read_vnnlib,
    robustness_property,
    write_counterexample,
    write_result,
    write_vnnlib,
)

_DECLARE_ACAS = "\n".join(
    [f"(declare-const X_{i} Real)" for i in range(5)]
    + [f"(declare-const Y_{j} Real)" for j in range(5)]
)

_ACAS_BOX = """
; Unscaled Input 0: (55947.691, 60760)
(assert (<= X_0 0.679857769))
(assert (>= X_0 0.6))
; Unscaled Input 1: (-3.141592, 3.141592)
(assert (<= X_1 0.499999896))
(assert (>= X_1 -0.499999896))
(assert (<= X_2 0.499999896))
(assert (>= X_2 -0.499999896))
(assert (<= X_3 0.5))
(assert (>= X_3 0.45))
(assert (<= X_4 -0.45))
(assert (>= X_4 -0.5))
"""

# ACAS Xu property 1: unsafe if the clear-of-conflict score exceeds a threshold.
ACAS_PROP_1 = f"""; ACAS Xu property 1
{_DECLARE_ACAS}
{_ACAS_BOX}
; unsafe if COC >= 1500 (scaled)
(assert (>= Y_0 3.991125645861615))
"""

# ACAS Xu property 2: unsafe if COC is the maximal score (a conjunction over the others).
ACAS_PROP_2 = f"""; ACAS Xu property 2
{_DECLARE_ACAS}
{_ACAS_BOX}
(assert (>= Y_0 Y_1))
(assert (>= Y_0 Y_2))
(assert (>= Y_0 Y_3))
(assert (>= Y_0 Y_4))
"""

_ACAS_LOWER = [0.6, -0.499999896, -0.499999896, 0.45, -0.5]
_ACAS_UPPER = [0.679857769, 0.499999896, 0.499999896, 0.5, -0.45]


def _mnist_text(x: list[float], eps: float, label: int) -> str:
    """An MNIST-style robustness file as the competition's generators write it."""
    lines = [f"(declare-const X_{i} Real)" for i in range(len(x))]
    lines += [f"(declare-const Y_{j} Real)" for j in range(10)]
    for i, v in enumerate(x):
        lines += [f"(assert (<= X_{i} {min(v + eps, 1.0)!r}))"]
        lines += [f"(assert (>= X_{i} {max(v - eps, 0.0)!r}))"]
    others = [f"    (and (>= Y_{j} Y_{label}))" for j in range(10) if j != label]
    return "\n".join([*lines, "(assert (or", *others, "))"]) + "\n"


def _same(a: Property, b: Property) -> bool:
    return (
        torch.equal(a.lower, b.lower)
        and torch.equal(a.upper, b.upper)
        and len(a.disjuncts) == len(b.disjuncts)
        and all(
            torch.equal(p.A, q.A) and torch.equal(p.b, q.b)
            for p, q in zip(a.disjuncts, b.disjuncts, strict=True)
        )
    )


# ---------------------------------------------------------------------------------------------
# Reading the standard forms.


def test_acas_property_1_single_output_bound() -> None:
    (prop,) = read_vnnlib(ACAS_PROP_1, num_inputs=5, num_outputs=5)
    assert prop.lower.tolist() == _ACAS_LOWER and prop.upper.tolist() == _ACAS_UPPER
    (half,) = prop.disjuncts
    # Y_0 ≥ c  ⇔  −Y_0 ≤ −c
    assert half.A.tolist() == [[-1.0, 0.0, 0.0, 0.0, 0.0]]
    assert half.b.tolist() == [-3.991125645861615]


def test_acas_property_2_conjunction_of_output_constraints() -> None:
    (prop,) = read_vnnlib(ACAS_PROP_2)
    (half,) = prop.disjuncts
    expected = [[-1.0 if j == 0 else 1.0 if j == k else 0.0 for j in range(5)] for k in range(1, 5)]
    assert half.A.tolist() == expected and half.b.tolist() == [0.0] * 4
    # y with COC maximal is in the unsafe set; with COC second it is not
    assert bool(half.holds(torch.tensor([[5.0, 1.0, 2.0, 3.0, 4.0]])))
    assert not bool(half.holds(torch.tensor([[3.0, 1.0, 4.0, 2.0, 0.0]])))


def test_mnist_robustness_property_is_a_disjunction() -> None:
    x = torch.rand(784, generator=torch.Generator().manual_seed(0)).tolist()
    (prop,) = read_vnnlib(_mnist_text(x, 0.02, label=7), num_inputs=784, num_outputs=10)
    expected = robustness_property(torch.tensor(x, dtype=torch.float64), 0.02, 7, 10)
    assert _same(prop, expected)
    assert len(prop.disjuncts) == 9


def test_or_of_atoms_and_several_input_boxes() -> None:
    text = """
    (declare-const X_0 Real)
    (declare-const Y_0 Real)
    (declare-const Y_1 Real)
    (assert (or
        (and (>= X_0 0.0) (<= X_0 0.5) (>= Y_0 1.0))
        (and (>= X_0 0.5) (<= X_0 1.0) (or (<= Y_0 Y_1) (>= Y_1 2.0)))
        (and (<= X_0 0.5) (>= X_0 0.0) (<= Y_1 -3))
    ))
    """
    first, second = read_vnnlib(text)
    # the first and third conjuncts share the box [0, 0.5]: one property, two disjuncts
    assert (first.lower.tolist(), first.upper.tolist()) == ([0.0], [0.5])
    assert [d.A.tolist() for d in first.disjuncts] == [[[-1.0, 0.0]], [[0.0, 1.0]]]
    assert [d.b.tolist() for d in first.disjuncts] == [[-1.0], [-3.0]]
    assert (second.lower.tolist(), second.upper.tolist()) == ([0.5], [1.0])
    assert [d.A.tolist() for d in second.disjuncts] == [[[1.0, -1.0]], [[0.0, -1.0]]]


def test_linear_terms_equalities_and_chains() -> None:
    text = """
    (declare-const X_0 Real) (declare-const X_1 Real)
    (declare-const Y_0 Real) (declare-const Y_1 Real) (declare-const Y_2 Real)
    (assert (<= -1 X_0 (/ 3 2)))       ; a chain: -1 ≤ X_0 ≤ 1.5
    (assert (= X_1 0.25))
    (assert (>= (* 2 X_0) -4))          ; weaker than the chain
    (assert (<= (+ Y_0 (* -2 Y_1) 1.5) (- Y_2 0.5)))
    (assert (< (- Y_0) (* 0.5 3 Y_2)))
    """
    (prop,) = read_vnnlib(text)
    assert prop.lower.tolist() == [-1.0, 0.25] and prop.upper.tolist() == [1.5, 0.25]
    (half,) = prop.disjuncts
    assert half.A.tolist() == [[1.0, -2.0, -1.0], [-1.0, 0.0, -1.5]]
    assert half.b.tolist() == [-2.0, 0.0]


def test_unbounded_inputs_no_output_constraint_and_infeasible_boxes() -> None:
    text = """
    (declare-const X_0 Real) (declare-const X_1 Real) (declare-const Y_0 Real)
    (assert (>= X_0 0))
    (assert (or (and (<= X_1 1) (>= X_1 2) (<= Y_0 0)) (and (<= X_1 1))))
    """
    (prop,) = read_vnnlib(text)  # the first conjunct's box is empty: dropped
    assert prop.lower.tolist() == [0.0, float("-inf")]
    assert prop.upper.tolist() == [float("inf"), 1.0]
    (half,) = prop.disjuncts  # no output constraint: every output is unsafe
    assert half.A.shape == (0, 1)
    assert bool(prop.violated_by(torch.tensor([[0.5, 0.0]]), torch.tensor([[7.0]])))
    empty = (
        "(declare-const X_0 Real) (declare-const Y_0 Real) (assert (<= X_0 -1)) (assert (>= X_0 1))"
    )
    assert read_vnnlib(empty) == []


def test_files_paths_and_gzip(tmp_path: Path) -> None:
    plain = tmp_path / "prop_2.vnnlib"
    plain.write_text(ACAS_PROP_2)
    packed = tmp_path / "prop_2.vnnlib.gz"
    with gzip.open(packed, "wt") as f:
        f.write(ACAS_PROP_2)
    reference = read_vnnlib(ACAS_PROP_2)[0]
    for source in (plain, str(plain), packed):
        assert _same(read_vnnlib(source)[0], reference)


# ---------------------------------------------------------------------------------------------
# Errors name the line and the form.


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("(assert (<= X_0 1.0)", r"line 4: '\(' is never closed"),
        ("(assert (<= X_0 1.0)))", r"line 4: unexpected '\)'"),
        ("(assert (<= X_9 1.0))", r"line 4: undeclared variable X_9 in \(<= X_9 1\.0\)"),
        ("(assert (<= (* X_0 Y_0) 1.0))",
         r"line 4: a product of variables is not linear in \(<= \(\* X_0 Y_0\) 1\.0\)"),
        ("(assert (<= X_0 Y_0))",
         r"line 4: a constraint mixes inputs and outputs in \(<= X_0 Y_0\)"),
        ("(assert (<= (+ X_0 X_1) 1))", r"line 4: input constraints must bound single variables"),
        ("(assert (not (<= Y_0 1)))", r"line 4: unsupported operator 'not'"),
        ("(assert (<= Y_0))", r"line 4: <= needs at least two operands"),
        ("(assert (<= Y_0 (exp 1)))",
         r"line 4: expected a number, a variable or a linear term .* in \(<= Y_0 \(exp 1\)\)"),
        ("(assert (<= Y_0 1) (<= Y_0 2))", r"line 4: assert takes one formula"),
        ("(check-sat)\n(push 1)", r"line 5: unsupported command 'push'"),
        ("(declare-const Z_0 Real)", r"line 4: variable Z_0: names must be X_<i> or Y_<j>"),
        ("(declare-const X_0 Real)", r"line 4: X_0 is declared twice"),
        ("(declare-const X_3 Int)", r"line 4: expected \(declare-const NAME Real\)"),
        ("(declare-const X_3 Real)", r"vnnlib: X_2 is not declared"),
        ("(assert (or\n  (and (<= Y_0 1))\n  (and (<= Y_0 zz))))",
         r"line 6: undeclared variable zz in \(<= Y_0 zz\)"),
    ],
)  # fmt: skip
def test_malformed_input_names_line_and_form(body: str, message: str) -> None:
    text = "(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n" + body
    with pytest.raises(ValueError, match=message):
        read_vnnlib(text)


def test_declared_sizes_are_checked() -> None:
    with pytest.raises(ValueError, match="num_inputs: the file declares 5 variables, expected 4"):
        read_vnnlib(ACAS_PROP_1, num_inputs=4)
    with pytest.raises(ValueError, match="num_outputs: the file declares 5 variables, expected 10"):
        read_vnnlib(ACAS_PROP_1, num_outputs=10)
    with pytest.raises(TypeError, match="source: expected a path or VNN-LIB text"):
        read_vnnlib(5)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Writing and reading back.


def _rows_property() -> Property:
    """Rows of every kind the writer has a form for, with floats that need all 17 digits."""
    a = torch.tensor(
        [
            [1.0, 0.0, 0.0],  # Y_0 ≤ b
            [0.0, -1.0, 0.0],  # Y_1 ≥ −b
            [1.0, 0.0, -1.0],  # Y_0 ≤ Y_2
            [1 / 3, -2.5e-7, 0.0],  # a general linear row
            [0.0, 0.0, 0.0],  # a row of zeros
        ],
        dtype=torch.float64,
    )
    b = torch.tensor([0.1, -0.0, 0.0, 1e-12, 2.0], dtype=torch.float64)
    lower = torch.tensor([-1 / 3, float("-inf")], dtype=torch.float64)
    upper = torch.tensor([2 / 3, 1e300], dtype=torch.float64)
    return Property(lower, upper, (Halfspaces(a, b),))


@pytest.mark.parametrize("name", ["acas1", "acas2", "mnist", "rows", "disjuncts"])
def test_write_read_round_trip(name: str) -> None:
    x = torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(1))
    rows = _rows_property()
    props = {
        "acas1": read_vnnlib(ACAS_PROP_1)[0],
        "acas2": read_vnnlib(ACAS_PROP_2)[0],
        "mnist": robustness_property(x, 0.05, 3, 10),
        "rows": rows,
        "disjuncts": Property(
            rows.lower, rows.upper, (*rows.disjuncts, Halfspaces(torch.zeros(0, 3), []))
        ),
    }
    prop = props[name]
    (back,) = read_vnnlib(write_vnnlib(prop))
    assert _same(back, prop)


def test_several_properties_round_trip_and_file(tmp_path: Path) -> None:
    a = robustness_property(torch.tensor([0.2, 0.9]), 0.1, 0, 3)
    b = robustness_property(torch.tensor([0.5, 0.5]), 0.25, 2, 3)
    path = tmp_path / "two.vnnlib"
    text = write_vnnlib([a, b], path)
    assert path.read_text() == text and text.count("(and ") == 4
    back = read_vnnlib(path)
    assert len(back) == 2 and _same(back[0], a) and _same(back[1], b)


def test_written_text_uses_the_competition_forms() -> None:
    text = write_vnnlib(read_vnnlib(ACAS_PROP_1)[0])
    assert "(assert (>= X_0 0.6))\n(assert (<= X_0 0.679857769))" in text
    assert "(assert (>= Y_0 3.991125645861615))" in text
    mnist = write_vnnlib(robustness_property(torch.tensor([0.5, 0.0]), 0.1, 1, 3))
    assert "(assert (or\n    (and (<= Y_1 Y_0))\n    (and (<= Y_1 Y_2))\n))" in mnist
    assert "(assert (>= X_1 0.0))\n(assert (<= X_1 0.1))" in mnist
    assert not re.search(r"\de", write_vnnlib(_rows_property()))  # decimals, no exponents


def test_write_rejects_mixed_sizes() -> None:
    a = robustness_property(torch.tensor([0.2, 0.9]), 0.1, 0, 3)
    b = robustness_property(torch.tensor([0.2]), 0.1, 0, 3)
    with pytest.raises(ValueError, match="prop: every property needs 2 inputs and 3 outputs"):
        write_vnnlib([a, b])
    with pytest.raises(ValueError, match="prop: expected a Property"):
        write_vnnlib([])


def test_robustness_property_box_and_disjuncts() -> None:
    x = torch.tensor([[0.0, 0.5], [0.98, 0.3]])
    prop = robustness_property(x, 0.05, 1, 4, bounds=(0.0, 1.0))
    torch.testing.assert_close(
        prop.lower, torch.tensor([0.0, 0.45, 0.93, 0.25], dtype=torch.float64)
    )
    torch.testing.assert_close(
        prop.upper, torch.tensor([0.05, 0.55, 1.0, 0.35], dtype=torch.float64)
    )
    assert len(prop.disjuncts) == 3
    z = torch.tensor([[0.0, 2.0, 1.0, 2.0], [0.0, 2.0, 1.0, 1.0]])  # a tie counts as a change
    assert prop.violated_by(x.reshape(1, -1).expand(2, -1), z).tolist() == [True, False]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"eps": -0.1}, "eps: expected a finite number >= 0"),
        ({"label": 4}, r"label: expected 0 <= label < 4"),
        ({"num_classes": 1, "label": 0}, "num_classes: expected at least 2"),
        ({"bounds": (1.0, 0.0)}, "bounds: expected lo < hi"),
        ({"x": torch.tensor([float("nan")])}, "x: contains NaN or Inf"),
    ],
)
def test_robustness_property_checks(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"x": torch.zeros(2), "eps": 0.1, "label": 0, "num_classes": 4}
    with pytest.raises(ValueError, match=message):
        robustness_property(**(args | kwargs))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Results.


def test_counterexample_format_and_exact_values() -> None:
    x = torch.tensor([[0.1, 1 / 3]], dtype=torch.float32)  # float32 values, written exactly
    y = torch.tensor([-2.5, 1e-7], dtype=torch.float64)
    text = write_counterexample(x, y)
    assert text == (
        "sat\n"
        "((X_0 0.10000000149011612)\n"
        " (X_1 0.3333333432674408)\n"
        " (Y_0 -2.5)\n"
        " (Y_1 0.0000001))\n"
    )
    status, x_back, y_back = read_counterexample(text)
    assert status == "sat"
    assert x_back is not None and torch.equal(x_back, x.double().reshape(-1))
    assert y_back is not None and torch.equal(y_back, y)


def test_counterexample_of_a_property_reads_back_as_a_violation(tmp_path: Path) -> None:
    prop = read_vnnlib(ACAS_PROP_2)[0]
    x = (prop.lower + prop.upper) / 2
    y = torch.tensor([9.0, 1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    path = tmp_path / "result.txt"
    write_result("sat", path, x=x, y=y)
    status, x_back, y_back = read_counterexample(path)
    assert status == "sat" and x_back is not None and y_back is not None
    assert bool(prop.violated_by(x_back[None], y_back[None]))


@pytest.mark.parametrize("status", ["unsat", "unknown", "timeout", "error"])
def test_results_without_counterexample(status: str, tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    assert write_result(status, path) == f"{status}\n" == path.read_text()
    assert read_counterexample(f"{status}\n") == (status, None, None)


def test_result_checks() -> None:
    with pytest.raises(ValueError, match="status: expected one of sat, unsat"):
        write_result("holds")
    with pytest.raises(ValueError, match="x, y: a sat result needs the counterexample"):
        write_result("sat")
    with pytest.raises(ValueError, match="x, y: only a sat result carries a counterexample"):
        write_result("unsat", x=torch.zeros(1), y=torch.zeros(1))
    with pytest.raises(ValueError, match="y: contains NaN or Inf"):
        write_counterexample(torch.zeros(1), torch.tensor([float("nan")]))
    assert read_counterexample("holds\n")[0] == "unsat"
    assert read_counterexample("violated\n((X_0 1.0) (Y_0 2.0))")[0] == "sat"
    with pytest.raises(ValueError, match="result: unknown status 'maybe' on line 1"):
        read_counterexample("maybe\n")
    with pytest.raises(ValueError, match=r"line 3: expected \(X_i value\) or \(Y_j value\)"):
        read_counterexample("sat\n((X_0 1.0)\n (Z_0 2.0))")
    with pytest.raises(ValueError, match=r"the X_ values are not numbered 0\.\.n-1"):
        read_counterexample("sat\n((X_1 1.0) (Y_0 2.0))")
