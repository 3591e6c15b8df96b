"""Attacks: each is configured with a ThreatModel and called as ``attack(model, x, y, target)``."""

from advex.attacks.base import Attack, Tracker
from advex.attacks.fgsm import FGSM
from advex.attacks.pgd import BIM, ILLC, PGD
from advex.attacks.visualize import FakeImage

__all__ = ["ATTACKS", "BIM", "FGSM", "ILLC", "PGD", "Attack", "FakeImage", "Tracker"]

#: The catalogue: name → class, for the CLI and for browsing.
ATTACKS: dict[str, type[Attack]] = {cls.name: cls for cls in (FGSM, BIM, ILLC, PGD, FakeImage)}
