"""advex: attack, defend, evaluate and certify PyTorch classifiers."""

from advex.model import Classifier, as_classifier
from advex.result import AttackResult
from advex.threat import ThreatModel

__all__ = ["AttackResult", "Classifier", "ThreatModel", "as_classifier"]
__version__ = "0.1.0"
