"""Attacks: each is configured with a ThreatModel and called as ``attack(model, x, y, target)``."""

from advex.attacks.apgd import APGD, APGDT
from advex.attacks.base import Attack, MinNormAttack, Tracker
from advex.attacks.blackbox import (
    ZOO,
    HopSkipJump,
    LocalSearch,
    OnePixel,
    OptAttack,
    SignOPT,
    Square,
    Substitute,
)
from advex.attacks.color import ColorResult, ReColorAdv
from advex.attacks.cw import CWL2
from advex.attacks.cw_l0 import CWL0
from advex.attacks.cw_linf import CWLinf
from advex.attacks.deepfool import DeepFool
from advex.attacks.ead import EAD
from advex.attacks.ensemble import Ensemble, EnsembleResult, Fast, Standard, fast, standard
from advex.attacks.fab import FAB, FABT
from advex.attacks.fgsm import FGSM
from advex.attacks.fitted import DatasetAttack, Fitted
from advex.attacks.fmn import FMN
from advex.attacks.jsma import JSMA
from advex.attacks.lbfgs import LBFGS
from advex.attacks.patch import AdversarialPatch, Patch
from advex.attacks.pgd import BIM, ILLC, PGD
from advex.attacks.rotation import RotationResult, RotationTranslation
from advex.attacks.stadv import FlowResult, StAdv
from advex.attacks.universal import Universal, UniversalPerturbation, UniversalSGD
from advex.attacks.visualize import FakeImage

__all__ = [
    "APGD",
    "APGDT",
    "ATTACKS",
    "BIM",
    "CWL0",
    "CWL2",
    "EAD",
    "FAB",
    "FABT",
    "FGSM",
    "FMN",
    "ILLC",
    "JSMA",
    "LBFGS",
    "PGD",
    "ZOO",
    "AdversarialPatch",
    "Attack",
    "CWLinf",
    "ColorResult",
    "DatasetAttack",
    "DeepFool",
    "Ensemble",
    "EnsembleResult",
    "FakeImage",
    "Fast",
    "Fitted",
    "FlowResult",
    "HopSkipJump",
    "LocalSearch",
    "MinNormAttack",
    "OnePixel",
    "OptAttack",
    "Patch",
    "ReColorAdv",
    "RotationResult",
    "RotationTranslation",
    "SignOPT",
    "Square",
    "StAdv",
    "Standard",
    "Substitute",
    "Tracker",
    "Universal",
    "UniversalPerturbation",
    "UniversalSGD",
    "fast",
    "standard",
]

#: The catalogue: name → class, for the CLI and for browsing.
ATTACKS: dict[str, type[Attack]] = {
    cls.name: cls
    for cls in (
        FGSM,
        BIM,
        ILLC,
        PGD,
        FakeImage,
        DeepFool,
        CWL2,
        CWLinf,
        CWL0,
        JSMA,
        LBFGS,
        FMN,
        EAD,
        APGD,
        APGDT,
        FAB,
        FABT,
        Square,
        HopSkipJump,
        LocalSearch,
        OnePixel,
        OptAttack,
        SignOPT,
        Substitute,
        ZOO,
        Standard,
        Fast,
        StAdv,
        RotationTranslation,
        ReColorAdv,
        AdversarialPatch,
        Universal,
        UniversalSGD,
    )
}
