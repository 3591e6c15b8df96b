"""Black-box attacks: they query the model's scores (forward passes) and never its gradients."""

from advex.attacks.blackbox.square import Square

__all__ = ["Square"]
