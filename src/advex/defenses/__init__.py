"""Defenses: one training loop with many objectives, inference-time defenses, and the adaptive
attacks (EOT, BPDA) that evaluate them honestly.

* Training: ``train(model, data, objective, config=TrainConfig(...))`` with an objective
  (``Standard``, ``FGSMMix``, ``FastFGSM``, ``PGDAT``, ``TRADES``, ``ALP``, ``EnsembleAT``,
  ``GradientPenalty``, ``Distillation``); ``advex train`` on the command line.
* In front of a model (``defend(model, *defenses)``): input transformations (``JPEG``,
  ``BitDepth``, ``MedianFilter``, ``GaussianBlur``, ``GaussianNoise``, ``ResizePad``,
  ``RandomTranslate``, ``RandomRotate``, ``RandomFlip``), random self-ensemble
  (``random_self_ensemble``, ``SelfEnsemble``), MagNet purification (``Reformer``,
  ``MagNet``) and detectors (``KDBUDetector``, ``ReconstructionDetector``).
* Adaptive evaluation: ``Adaptive(attack)`` runs any attack through ``EOT`` and ``BPDA``
  (``adapt(model)``) and decides every point on the deployed model; ``advex evaluate`` applies
  it automatically to models that contain a randomized or non-differentiable advex defense.
"""

from advex.defenses.adaptive import BPDA, EOT, Adaptive, adapt, needs_adapting
from advex.defenses.base import (
    Defense,
    defend,
    defenses_in,
    is_nondifferentiable,
    is_randomized,
    seed,
)
from advex.defenses.detect import (
    KDBUDetector,
    detector_aware_loss,
    evaluate_detector,
    roc_auc,
)
from advex.defenses.objectives import (
    ALP,
    OBJECTIVES,
    PGDAT,
    TRADES,
    Distillation,
    EnsembleAT,
    FastFGSM,
    FGSMMix,
    GradientPenalty,
    Objective,
    Standard,
)
from advex.defenses.purify import (
    Autoencoder,
    DivergenceDetector,
    MagNet,
    ReconstructionDetector,
    Reformer,
    train_autoencoder,
)
from advex.defenses.randomized import NoiseLayer, SelfEnsemble, random_self_ensemble, strip_noise
from advex.defenses.registry import DEFENSES, build_defense, parse_defense
from advex.defenses.training import TrainConfig, TrainResult, train
from advex.defenses.transforms import (
    JPEG,
    BitDepth,
    GaussianBlur,
    GaussianNoise,
    MedianFilter,
    RandomFlip,
    RandomRotate,
    RandomTranslate,
    ResizePad,
)

__all__ = [
    "ALP",
    "BPDA",
    "DEFENSES",
    "EOT",
    "JPEG",
    "OBJECTIVES",
    "PGDAT",
    "TRADES",
    "Adaptive",
    "Autoencoder",
    "BitDepth",
    "Defense",
    "Distillation",
    "DivergenceDetector",
    "EnsembleAT",
    "FGSMMix",
    "FastFGSM",
    "GaussianBlur",
    "GaussianNoise",
    "GradientPenalty",
    "KDBUDetector",
    "MagNet",
    "MedianFilter",
    "NoiseLayer",
    "Objective",
    "RandomFlip",
    "RandomRotate",
    "RandomTranslate",
    "ReconstructionDetector",
    "Reformer",
    "ResizePad",
    "SelfEnsemble",
    "Standard",
    "TrainConfig",
    "TrainResult",
    "adapt",
    "build_defense",
    "defend",
    "defenses_in",
    "detector_aware_loss",
    "evaluate_detector",
    "is_nondifferentiable",
    "is_randomized",
    "needs_adapting",
    "parse_defense",
    "random_self_ensemble",
    "roc_auc",
    "seed",
    "strip_noise",
    "train",
    "train_autoencoder",
]
