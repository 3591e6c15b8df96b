"""Properties a verifier decides: ∃ x in an input set whose outputs lie in an unsafe set?

The unsafe output set is a union of polyhedra ("disjuncts"), each {z : A·z ≤ b}. This is the
shape of a VNN-LIB property (input box, disjunction of conjunctions of linear output
constraints) and of misclassification: for label y the disjuncts are {z : z_y − z_j ≤ 0},
one per class j ≠ y (``misclassification``). "sat" means a counterexample exists; "unsat"
means the property is proven (the network is safe on the whole input set).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Halfspaces", "Property", "misclassification"]


@dataclass(frozen=True)
class Halfspaces:
    """The polyhedron {z : A·z ≤ b}; ``A`` (m, K) and ``b`` (m,) float64."""

    A: Tensor
    b: Tensor

    def __post_init__(self) -> None:
        a = torch.as_tensor(self.A, dtype=torch.float64)
        b = torch.as_tensor(self.b, dtype=torch.float64).reshape(-1)
        if a.ndim != 2 or a.shape[0] != b.shape[0]:
            raise ValueError(f"halfspaces: A {tuple(a.shape)} and b {tuple(b.shape)} disagree")
        object.__setattr__(self, "A", a)
        object.__setattr__(self, "b", b)

    def holds(self, z: Tensor, tol: float = 0.0) -> Tensor:
        """Whether each row of ``z`` (B, K) satisfies every constraint (within ``tol``)."""
        return ((z.to(torch.float64) @ self.A.T) <= self.b + tol).all(dim=1)


@dataclass(frozen=True)
class Property:
    """Is there an x with ``lower ≤ x ≤ upper`` (flattened, float64) whose outputs lie in one of
    ``disjuncts``? Inputs of other shapes are flattened in row-major order."""

    lower: Tensor
    upper: Tensor
    disjuncts: tuple[Halfspaces, ...]

    def __post_init__(self) -> None:
        lo = torch.as_tensor(self.lower, dtype=torch.float64).reshape(-1)
        hi = torch.as_tensor(self.upper, dtype=torch.float64).reshape(-1)
        if lo.shape != hi.shape:
            raise ValueError(f"property: lower {tuple(lo.shape)} and upper {tuple(hi.shape)}")
        if bool((lo > hi).any()):
            raise ValueError("property: some lower bound exceeds its upper bound")
        if not self.disjuncts:
            raise ValueError("property: needs at least one output disjunct")
        object.__setattr__(self, "lower", lo)
        object.__setattr__(self, "upper", hi)
        object.__setattr__(self, "disjuncts", tuple(self.disjuncts))

    def violated_by(self, x: Tensor, z: Tensor, tol: float = 0.0) -> Tensor:
        """Whether (x, z = f(x)) rows are counterexamples: x in the box, z in some disjunct."""
        v = x.reshape(x.shape[0], -1).to(torch.float64)
        inside = ((v >= self.lower - tol) & (v <= self.upper + tol)).all(dim=1)
        unsafe = torch.zeros_like(inside)
        for d in self.disjuncts:
            unsafe |= d.holds(z, tol)
        return inside & unsafe


def misclassification(label: int, num_classes: int) -> tuple[Halfspaces, ...]:
    """Disjuncts {z : z_label − z_j ≤ 0} for every j ≠ label (a tie counts as a change)."""
    eye = torch.eye(num_classes, dtype=torch.float64)
    return tuple(
        Halfspaces((eye[label] - eye[j])[None], torch.zeros(1))
        for j in range(num_classes)
        if j != label
    )
