"""Black-box attacks: they see the model only through an oracle (scores or labels), never its
gradients, and every query counts against a per-sample budget."""

from advex.attacks.blackbox.base import BlackBoxAttack, QueryTracker
from advex.attacks.blackbox.hsja import HopSkipJump
from advex.attacks.blackbox.local_search import LocalSearch
from advex.attacks.blackbox.one_pixel import OnePixel
from advex.attacks.blackbox.opt import OptAttack
from advex.attacks.blackbox.sign_opt import SignOPT
from advex.attacks.blackbox.square import Square
from advex.attacks.blackbox.substitute import Substitute, train_substitute
from advex.attacks.blackbox.zoo import ZOO

__all__ = [
    "ZOO",
    "BlackBoxAttack",
    "HopSkipJump",
    "LocalSearch",
    "OnePixel",
    "OptAttack",
    "QueryTracker",
    "SignOPT",
    "Square",
    "Substitute",
    "train_substitute",
]
