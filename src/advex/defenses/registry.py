"""Inference-time defenses by name: the ``--defense`` specs of the command line.

A spec is ``NAME`` or ``NAME:KEY=VALUE,KEY=VALUE,...``, e.g. ``jpeg:quality=75``,
``bitdepth:bits=4``, ``noise:sigma=0.1``, ``resizepad``, ``blur:sigma=1``,
``translate:max_shift=2``, ``rotate:max_degrees=15``, ``flip``, ``median:kernel_size=3``. The
keys are the keyword arguments of the defense's class (``advex.defenses.transforms``); values
are read as int, float, bool (true/false), none, or else text. ``parse_defense`` checks the
name, the keys and the values (by building the defense once) and raises ``ValueError`` naming
the spec and what is wrong.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from advex.defenses.base import Defense

__all__ = ["DEFENSES", "DefenseSpec", "build_defense", "parse_defense"]

#: Spec name → "module:class" of the defense (modules under ``advex.defenses``).
DEFENSES: Mapping[str, str] = MappingProxyType(
    {
        "jpeg": "transforms:JPEG",
        "bitdepth": "transforms:BitDepth",
        "noise": "transforms:GaussianNoise",
        "resizepad": "transforms:ResizePad",
        "blur": "transforms:GaussianBlur",
        "median": "transforms:MedianFilter",
        "translate": "transforms:RandomTranslate",
        "rotate": "transforms:RandomRotate",
        "flip": "transforms:RandomFlip",
    }
)

_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


def defense_class(name: str) -> type[Defense]:
    """The class behind the spec name ``name``; ``ValueError`` for an unknown name."""
    if name not in DEFENSES:
        raise ValueError(f"unknown defense {name!r}; choose from {', '.join(DEFENSES)}")
    module, cls_name = DEFENSES[name].split(":")
    cls = getattr(importlib.import_module(f"advex.defenses.{module}"), cls_name)
    assert isinstance(cls, type) and issubclass(cls, Defense)
    return cls


def _keys(cls: type[Defense]) -> list[str]:
    params = inspect.signature(cls.__init__).parameters.values()
    return [
        p.name
        for p in params
        if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


def _value(text: str) -> Any:
    """A spec value: int, float, bool, None, or the text itself."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip()


@dataclass(frozen=True)
class DefenseSpec:
    """A parsed spec: the defense's name and its keyword arguments."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def build(self) -> Defense:
        """A new defense (its own generator) with these settings."""
        return defense_class(self.name)(**dict(self.params))

    def __str__(self) -> str:
        if not self.params:
            return self.name
        args = ",".join(f"{k}={_text(v)}" for k, v in self.params.items())
        return f"{self.name}:{args}"


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    return str(value)


def parse_defense(spec: str) -> DefenseSpec:
    """Parse ``NAME[:KEY=VALUE,...]`` (see the module docstring).

    Raises:
        ValueError: an empty spec, an unknown name, a key the defense does not take, a value
            it rejects, or a required argument left out — naming the spec.
    """
    if not isinstance(spec, str):
        raise TypeError(f"defense spec: expected text, got {type(spec).__name__}")
    text = spec.strip()
    name, _, rest = text.partition(":")
    name = name.strip().lower()
    if not name or not _NAME.match(name):
        raise ValueError(
            f"{spec!r}: expected NAME or NAME:KEY=VALUE,... with NAME one of {', '.join(DEFENSES)}"
        )
    try:
        cls = defense_class(name)
    except ValueError as err:
        raise ValueError(f"{spec!r}: {err}") from None
    keys = _keys(cls)
    params: dict[str, Any] = {}
    for item in (p for p in rest.split(",") if p.strip()) if rest else ():
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key or not value.strip():
            raise ValueError(f"{spec!r}: expected KEY=VALUE, got {item.strip()!r}")
        if key not in keys:
            raise ValueError(f"{spec!r}: {name} takes {', '.join(keys)}; got {key!r}")
        if key in params:
            raise ValueError(f"{spec!r}: {key!r} given twice")
        params[key] = _value(value)
    parsed = DefenseSpec(name, MappingProxyType(params))
    try:
        parsed.build()
    except TypeError as err:
        missing = re.search(r"missing \d+ required (?:positional|keyword-only) argument", str(err))
        if missing:
            needed = [
                p.name
                for p in inspect.signature(cls.__init__).parameters.values()
                if p.name != "self" and p.default is p.empty and p.name not in params
            ]
            raise ValueError(
                f"{spec!r}: {name} needs {', '.join(needed)} (e.g. {name}:{needed[0]}=...)"
            ) from None
        raise ValueError(f"{spec!r}: {err}") from None
    except ValueError as err:
        raise ValueError(f"{spec!r}: {err}") from None
    return parsed


def build_defense(spec: str) -> Defense:
    """``parse_defense(spec).build()``."""
    return parse_defense(spec).build()
