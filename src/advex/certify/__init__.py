"""Certification: prove that no adversarial example exists within a radius, or find the exact
minimal one.

* ``bounds(model, x, y, eps, method="ibp"|"crown"|"lp"|"progressive")`` — sound lower bounds on
  the logit margins over the ε-ball ∩ box (fast, incomplete); ``certified_radius`` per sample.
* ``verify(model, x, y, eps, norm)`` — exact: robust / not robust (with a re-checked
  counterexample) / unknown at the time limit, by a MILP (HiGHS; the ``verify`` extra).
* ``minimal_distortion(model, x, y, norm)`` — the exact minimal adversarial distance.
* ``Smoothed(model, sigma)`` — randomized smoothing (Cohen et al. 2019): L2 certificates that
  hold with probability 1 − α.
* ``Network`` (from an ``nn.Module``; ``network_from_onnx`` from ONNX), ``InputDomain``,
  ``Property`` and ``read_vnnlib`` for VNN-LIB properties; ``certify_dataset`` for whole
  datasets with per-sample records saved as they are decided.

The MILP and ONNX parts import their optional dependencies (highspy, onnx) only when used.
"""

from __future__ import annotations

import importlib
from typing import Any

from advex.certify.bounds import METHODS, MarginBounds, bounds, certified_radius
from advex.certify.domain import InputDomain
from advex.certify.network import Network, UnsupportedLayerError
from advex.certify.runner import CERTIFY_METHODS, certify_dataset
from advex.certify.smoothing import ABSTAIN, Smoothed, SmoothingCertificate, noise_augment
from advex.certify.spec import Halfspaces, Property, misclassification
from advex.certify.vnnlib import read_vnnlib, robustness_property, write_vnnlib

__all__ = [
    "ABSTAIN",
    "CERTIFY_METHODS",
    "METHODS",
    "Distortion",
    "Halfspaces",
    "InputDomain",
    "MarginBounds",
    "Network",
    "NumericalTroubleWarning",
    "Property",
    "PropertyResult",
    "Smoothed",
    "SmoothingCertificate",
    "UnsupportedLayerError",
    "Verification",
    "bounds",
    "certified_radius",
    "certify_dataset",
    "minimal_distortion",
    "misclassification",
    "network_from_onnx",
    "noise_augment",
    "read_vnnlib",
    "robustness_property",
    "solve_property",
    "solve_vnnlib",
    "verify",
    "write_vnnlib",
]

_LAZY = {
    "Distortion": "advex.certify.mip",
    "NumericalTroubleWarning": "advex.certify.mip",
    "PropertyResult": "advex.certify.mip",
    "Verification": "advex.certify.mip",
    "minimal_distortion": "advex.certify.mip",
    "solve_property": "advex.certify.mip",
    "verify": "advex.certify.mip",
    "network_from_onnx": "advex.certify.onnx",
    "solve_vnnlib": "advex.certify.vnncomp",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'advex.certify' has no attribute {name!r}")
