"""Answer a VNN-LIB property on an ONNX network, as a VNN-COMP verifier does.

``solve_vnnlib(onnx, vnnlib, timeout)`` reads the network (``advex.certify.onnx``, no code
executed) and the property (``advex.certify.vnnlib``; several input regions are several
properties), decides each with the MILP (``advex.certify.mip.solve_property``) within what is
left of the time limit, and answers ``sat`` as soon as one region has a re-checked
counterexample, ``unsat`` when every region is proven, else ``unknown`` (or ``timeout``). With
``result`` it writes the VNN-COMP result file: the answer, and for ``sat`` the counterexample's
inputs and outputs.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

__all__ = ["solve_vnnlib"]


def solve_vnnlib(
    onnx: str | os.PathLike[str],
    vnnlib: str | os.PathLike[str],
    *,
    timeout: float = 120.0,
    result: str | os.PathLike[str] | None = None,
) -> str:
    """``sat``, ``unsat``, ``unknown`` or ``timeout`` for the property ``vnnlib`` on ``onnx``.

    Raises:
        FileNotFoundError: a file is missing.
        UnsupportedLayerError: the network holds an operator the verifier cannot encode.
        ValueError: a malformed property, or one whose sizes do not match the network.
    """
    from advex.certify.mip import solve_property
    from advex.certify.onnx import network_from_onnx
    from advex.certify.vnnlib import read_vnnlib, write_counterexample, write_result

    start = time.perf_counter()
    for path in (onnx, vnnlib):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such file")
    net = network_from_onnx(Path(onnx))
    props = read_vnnlib(Path(vnnlib), num_inputs=net.input_size, num_outputs=net.num_classes)
    answer = "unsat"
    for prop in props:
        left = timeout - (time.perf_counter() - start)
        if left <= 0:
            answer = "timeout"
            break
        found = solve_property(net, prop, time_limit=left)
        if found.status == "sat":
            if result is not None:
                assert found.counterexample is not None and found.outputs is not None
                write_counterexample(found.counterexample, found.outputs, Path(result))
            return "sat"
        if found.status != "unsat":
            answer = "unknown"
    if result is not None:
        write_result(answer, Path(result))
    return answer
