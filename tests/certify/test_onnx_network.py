"""Networks read from ONNX graphs: the same function as the torch model and as onnxruntime,
ops the exporter emits and ops only hand-built graphs have, and errors naming the node."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from certify_nets import randomize_batchnorm
from torch import Tensor, nn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from advex import zoo  # noqa: E402
from advex.certify.network import (  # noqa: E402
    Conv,
    Dense,
    MaxPool,
    Network,
    ReLU,
    Scale,
    UnsupportedLayerError,
)
from advex.certify.onnx import network_from_onnx  # noqa: E402

ATOL = 1e-5


# ---------------------------------------------------------------------------------------------
# Exported torch models.


def _export(model: nn.Module, shape: tuple[int, ...], *, dynamic: bool, fold: bool = True) -> bytes:
    buffer = io.BytesIO()
    extra = {"dynamic_axes": {"x": {0: "batch"}, "y": {0: "batch"}}} if dynamic else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (torch.rand(1, *shape),),
            buffer,
            dynamo=False,
            input_names=["x"],
            output_names=["y"],
            do_constant_folding=fold,
            **extra,
        )
    return buffer.getvalue()


def _session(model: bytes) -> object:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _run_ort(model: bytes, x: Tensor) -> Tensor:
    out = _session(model).run(None, {"x": x.numpy()})[0]  # type: ignore[attr-defined]
    return torch.from_numpy(np.asarray(out)).double()


def _ops(model: bytes) -> list[str]:
    return [n.op_type for n in onnx.load_from_string(model).graph.node]


class _Normalized(nn.Module):
    """(x − μ)/σ before the model: exported as Sub and Div nodes with constants."""

    def __init__(self, model: nn.Module, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: Tensor) -> Tensor:
        return self.model((x - self.mean) / self.std)


class _View(nn.Module):
    """``x.view(x.size(0), -1)``: exported as Shape → Gather → Unsqueeze → Concat → Reshape."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, stride=2)
        self.fc = nn.Linear(3 * 3 * 3, 4)

    def forward(self, x: Tensor) -> Tensor:
        z = torch.relu(self.conv(x))
        return self.fc(z.view(z.size(0), -1))


def _models() -> dict[str, tuple[nn.Module, tuple[int, ...], list[str]]]:
    """name → (model, input shape, ops the export must contain)."""
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    cnn = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1, stride=1, groups=2),
        nn.ReLU(),
        nn.BatchNorm2d(6),  # after a ReLU: a Scale of its own
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(6 * 2 * 2, 5),
    )
    bn1d = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    normalized = _Normalized(
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)),
        torch.tensor([0.4, 0.5, 0.6]).reshape(3, 1, 1),
        torch.tensor([0.2, 0.25, 0.3]).reshape(3, 1, 1),
    )
    return {
        "mlp": (mlp, (1, 8, 8), ["Flatten", "Gemm", "Relu"]),
        "cnn": (
            randomize_batchnorm(cnn),
            (2, 8, 8),
            ["Conv", "BatchNormalization", "MaxPool", "AveragePool"],
        ),
        "bn1d": (randomize_batchnorm(bn1d), (5,), ["BatchNormalization"]),
        "normalized": (normalized.eval(), (3, 6, 6), ["Sub", "Div", "Conv"]),
        "view": (_View().eval(), (1, 7, 7), ["Concat", "Reshape"]),
    }


@pytest.mark.parametrize("dynamic", [False, True], ids=["batch1", "dynamic"])
@pytest.mark.parametrize("name", ["mlp", "cnn", "bn1d", "normalized", "view"])
def test_exported_models_match_torch_and_onnxruntime(name: str, dynamic: bool) -> None:
    model, shape, ops = _models()[name]
    exported = _export(model, shape, dynamic=dynamic, fold=False)
    assert set(ops) <= set(_ops(exported))
    net = network_from_onnx(exported)
    assert net.input_shape == shape
    x = torch.rand(3 if dynamic else 1, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x).double()
    logits = net.forward(x)
    assert logits.dtype == torch.float64 and logits.shape == expected.shape
    torch.testing.assert_close(logits, expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(logits, _run_ort(exported, x), atol=ATOL, rtol=0)


def test_exported_layers_are_folded_like_from_module() -> None:
    """BatchNorm after a Conv folds into it, normalization into the unpadded Conv after it."""
    models = _models()
    cnn = network_from_onnx(_export(models["cnn"][0], (2, 8, 8), dynamic=False, fold=False))
    assert [type(layer) for layer in cnn.layers] == [
        Conv, ReLU, MaxPool, Conv, ReLU, Scale, Conv, Dense
    ]  # fmt: skip
    normalized = network_from_onnx(_export(models["normalized"][0], (3, 6, 6), dynamic=False))
    assert [type(layer) for layer in normalized.layers] == [Conv, ReLU, Dense]


@pytest.mark.parametrize("name", ["mnist_mlp", "digits_mlp", "mnist_cnn"])
def test_zoo_models_read_from_onnx(name: str) -> None:
    module = zoo.load(name).module
    shape = tuple(module.input_shape)
    exported = _export(module, shape, dynamic=True)
    net = network_from_onnx(exported)
    x = torch.rand(4, *shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = module(x).double()
    torch.testing.assert_close(net.forward(x), expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(net.forward(x), _run_ort(exported, x), atol=ATOL, rtol=0)
    reference = Network.from_module(module)
    assert [type(a) for a in net.layers] == [type(b) for b in reference.layers]
    assert net.num_relus() == reference.num_relus()


def test_path_bytes_and_proto_give_the_same_network(tmp_path: Path) -> None:
    exported = _export(_models()["mlp"][0], (1, 8, 8), dynamic=False)
    path = tmp_path / "mlp.onnx"
    path.write_bytes(exported)
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    outputs = [
        network_from_onnx(source).forward(x)
        for source in (exported, path, str(path), onnx.load_from_string(exported))
    ]
    for out in outputs[1:]:
        assert torch.equal(out, outputs[0])
    with pytest.raises(TypeError, match=r"model: expected a path, bytes or onnx\.ModelProto"):
        network_from_onnx(3)  # type: ignore[arg-type]


@pytest.mark.parametrize("activation", [nn.Sigmoid(), nn.Softmax(dim=1), nn.Tanh()])
def test_unsupported_exported_op_names_the_node(activation: nn.Module) -> None:
    model = nn.Sequential(nn.Linear(4, 4), activation, nn.Linear(4, 2))
    exported = _export(model, (4,), dynamic=False)
    node = next(n for n in onnx.load_from_string(exported).graph.node if n.op_type not in ("Gemm",))
    with pytest.raises(UnsupportedLayerError, match=rf"node {node.name} \({node.op_type}\)"):
        network_from_onnx(exported)


# ---------------------------------------------------------------------------------------------
# Hand-built graphs (ops and attributes the exporter does not emit).


def _model(
    nodes: list[onnx.NodeProto],
    in_shape: list[int | str],
    out_shape: list[int | str],
    initializers: dict[str, np.ndarray] | None = None,
    opset: int = 13,
) -> bytes:
    graph = helper.make_graph(
        nodes,
        "test",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in (initializers or {}).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _check_against_ort(model: bytes, x: Tensor) -> Network:
    net = network_from_onnx(model)
    torch.testing.assert_close(
        net.forward(x), _run_ort(model, x).reshape(x.shape[0], -1), atol=ATOL, rtol=0
    )
    return net


def test_matmul_then_add_is_one_dense_layer() -> None:
    w, b = _rng(0).normal(size=(6, 4)), _rng(1).normal(size=(4,))
    model = _model(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])],
        ["N", 6],
        ["N", 4],
        {"W": w, "b": b},
    )
    net = _check_against_ort(model, torch.rand(5, 6))
    assert len(net.layers) == 1 and isinstance(net.layers[0], Dense)
    dense = net.layers[0]
    assert torch.equal(dense.weight, torch.from_numpy(w.astype(np.float32).T).double())
    assert torch.equal(dense.bias, torch.from_numpy(b.astype(np.float32)).double())


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_alpha_beta_and_transposes(trans_b: int) -> None:
    w = _rng(2).normal(size=(3, 6) if trans_b else (6, 3))
    c = _rng(3).normal(size=(1, 3))
    node = helper.make_node("Gemm", ["x", "W", "C"], ["y"], alpha=0.5, beta=2.0, transB=trans_b)
    model = _model([node], [1, 6], [1, 3], {"W": w, "C": c})
    x = torch.rand(1, 6, generator=torch.Generator().manual_seed(4))
    net = _check_against_ort(model, x)
    w32, c32 = w.astype(np.float32).astype(np.float64), c.astype(np.float32).astype(np.float64)
    expected = 0.5 * x.double().numpy() @ (w32.T if trans_b else w32) + 2.0 * c32
    np.testing.assert_allclose(net.forward(x).numpy(), expected, rtol=0, atol=1e-12)


def test_gemm_with_transposed_column_input() -> None:
    """x reshaped to an (n, 1) column, then Gemm with transA=1: the same product x·W."""
    w = _rng(5).normal(size=(4, 2))
    nodes = [
        helper.make_node("Reshape", ["x", "column"], ["c"]),
        helper.make_node("Gemm", ["c", "W"], ["y"], transA=1),
    ]
    graph = helper.make_graph(
        nodes,
        "column",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [
            numpy_helper.from_array(w.astype(np.float32), "W"),
            numpy_helper.from_array(np.array([4, 1], dtype=np.int64), "column"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    net = _check_against_ort(model.SerializeToString(), torch.rand(1, 4))
    assert net.input_shape == (4,) and [type(layer) for layer in net.layers] == [Dense]


def test_constant_nodes_sub_div_fold_into_an_unpadded_conv() -> None:
    mean = np.array([0.5, 0.25], dtype=np.float32).reshape(1, 2, 1, 1)
    std = np.array([0.5, 2.0], dtype=np.float32).reshape(1, 2, 1, 1)
    nodes = [
        helper.make_node("Constant", [], ["m"], value=numpy_helper.from_array(mean)),
        helper.make_node("Constant", [], ["s"], value=numpy_helper.from_array(std)),
        helper.make_node("Sub", ["x", "m"], ["a"]),
        helper.make_node("Div", ["a", "s"], ["b"]),
        helper.make_node("Conv", ["b", "W", "B"], ["c"], kernel_shape=[3, 3], strides=[2, 1]),
        helper.make_node("Relu", ["c"], ["d"]),
        helper.make_node("Flatten", ["d"], ["e"], axis=1),
        helper.make_node("Gemm", ["e", "V"], ["y"], transB=1),
    ]
    inits = {
        "W": _rng(6).normal(size=(3, 2, 3, 3)),
        "B": _rng(7).normal(size=(3,)),
        "V": _rng(8).normal(size=(4, 3 * 3 * 5)),
    }
    model = _model(nodes, ["N", 2, 7, 7], ["N", 4], inits)
    net = _check_against_ort(model, torch.rand(3, 2, 7, 7))
    assert [type(layer) for layer in net.layers] == [Conv, ReLU, Dense]


def test_constant_on_the_left_and_mul() -> None:
    """c − x, c·x and c + x with the constant as the first operand."""
    c = _rng(9).normal(size=(1, 4)).astype(np.float32)
    nodes = [
        helper.make_node("Sub", ["c", "x"], ["a"]),
        helper.make_node("Mul", ["c", "a"], ["b"]),
        helper.make_node("Add", ["c", "b"], ["d"]),
        helper.make_node("MatMul", ["d", "W"], ["y"]),
    ]
    model = _model(nodes, [1, 4], [1, 2], {"c": c, "W": _rng(10).normal(size=(4, 2))})
    net = _check_against_ort(model, torch.rand(1, 4))
    assert [type(layer) for layer in net.layers] == [Dense]


def test_reshape_transpose_squeeze_unsqueeze_keep_the_order() -> None:
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["a"]),  # (1, 6) → (1, 1, 6, 1)
        helper.make_node("Transpose", ["a"], ["b"], perm=[1, 0, 2, 3]),  # moves size-1 axes
        helper.make_node("Squeeze", ["b", "axes"], ["c"]),  # → (6,)
        helper.make_node("Unsqueeze", ["c", "zero"], ["d"]),  # → (1, 6)
        helper.make_node("Identity", ["d"], ["e"]),
        helper.make_node("Dropout", ["e"], ["f"]),
        helper.make_node("MatMul", ["f", "W"], ["y"]),
    ]
    inits = {"W": _rng(11).normal(size=(6, 3))}
    graph = helper.make_graph(
        nodes,
        "test",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [
            numpy_helper.from_array(inits["W"].astype(np.float32), "W"),
            numpy_helper.from_array(np.array([1, 1, -1, 1], dtype=np.int64), "shape"),
            numpy_helper.from_array(np.array([0, 1, 3], dtype=np.int64), "axes"),
            numpy_helper.from_array(np.array([0], dtype=np.int64), "zero"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    net = _check_against_ort(model.SerializeToString(), torch.rand(1, 6))
    assert [type(layer) for layer in net.layers] == [Dense]


def test_plain_vector_input_and_a_relu_at_the_end() -> None:
    """Input (n,) without a batch axis; a graph ending in Relu gets an identity Scale."""
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"]),
        helper.make_node("Relu", ["h"], ["y"]),
    ]
    model = _model(nodes, [5], [3], {"W": _rng(12).normal(size=(5, 3))})
    net = network_from_onnx(model)
    assert net.input_shape == (5,)
    assert [type(layer) for layer in net.layers] == [Dense, ReLU, Scale]
    x = torch.rand(1, 5)
    expected = _session(model).run(None, {"x": x[0].numpy()})[0]  # type: ignore[attr-defined]
    torch.testing.assert_close(
        net.forward(x)[0], torch.from_numpy(expected).double(), atol=ATOL, rtol=0
    )


def test_batchnorm_maxpool_averagepool_nodes() -> None:
    c = 3
    nodes = [
        helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["a"], epsilon=1e-3),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[1, 1]),
        helper.make_node("AveragePool", ["p"], ["q"], kernel_shape=[3, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["q"], ["f"]),
        helper.make_node("Gemm", ["f", "W"], ["y"], transB=1),
    ]
    inits = {
        "g": _rng(13).normal(size=(c,)),
        "b": _rng(14).normal(size=(c,)),
        "m": _rng(15).normal(size=(c,)),
        "v": _rng(16).uniform(0.5, 2, size=(c,)),
        "W": _rng(17).normal(size=(2, c * 3 * 3)),
    }
    model = _model(nodes, [1, c, 8, 7], [1, 2], inits)
    net = _check_against_ort(model, torch.rand(1, c, 8, 7) * 2 - 1)
    assert [type(layer) for layer in net.layers] == [Scale, ReLU, MaxPool, Conv, Dense]


# ---------------------------------------------------------------------------------------------
# What cannot be read.


def _linear_tail(name: str = "h") -> tuple[list[onnx.NodeProto], dict[str, np.ndarray]]:
    return [helper.make_node("MatMul", [name, "W"], ["y"], name="out")], {"W": np.ones((4, 2))}


@pytest.mark.parametrize(
    ("node", "extra", "message"),
    [
        (helper.make_node("Sigmoid", ["x"], ["h"], name="act"), {}, r"node act \(Sigmoid\)"),
        (helper.make_node("Div", ["c", "x"], ["h"], name="inv"), {"c": np.ones((1, 4))},
         r"node inv \(Div\): a constant divided by the tensor is not linear"),
        (helper.make_node("Mul", ["x", "x"], ["h"], name="sq"), {},
         r"node sq \(Mul\): .*single chain"),
        (helper.make_node("Add", ["x", "c"], ["h"], name="wide"), {"c": np.ones((3, 4))},
         r"node wide \(Add\): constant of shape \(3, 4\) does not broadcast"),
        (helper.make_node("Relu", ["x"], ["h"], name="odd", foo=1), {},
         r"node odd \(Relu\): unsupported attribute\(s\) foo"),
    ],
)  # fmt: skip
def test_unsupported_nodes_are_named(
    node: onnx.NodeProto, extra: dict[str, np.ndarray], message: str
) -> None:
    tail, inits = _linear_tail()
    graph = helper.make_graph(
        [node, *tail],
        "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in (inits | extra).items()],
    )
    with pytest.raises(UnsupportedLayerError, match=message):
        network_from_onnx(helper.make_model(graph))


def test_branches_are_refused() -> None:
    """A residual connection: x feeds both the Relu and the Add."""
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Add", ["x", "r"], ["h"], name="skip"),
        *_linear_tail()[0],
    ]
    model = _model(nodes, [1, 4], [1, 2], _linear_tail()[1])
    with pytest.raises(UnsupportedLayerError, match=r"node relu \(Relu\): tensor x feeds 2 nodes"):
        network_from_onnx(model)


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ({"pads": [1, 1, 0, 0]}, "asymmetric pads"),
        ({"dilations": [2, 2]}, "dilations"),
        ({"auto_pad": "SAME_UPPER"}, "auto_pad=SAME_UPPER"),
        ({"kernel_shape": [2, 2]}, "kernel_shape disagrees"),
    ],
)
def test_conv_attributes_out_of_reach(attributes: dict[str, object], message: str) -> None:
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv", **attributes),
        helper.make_node("Flatten", ["c"], ["y"]),
    ]
    model = _model(nodes, [1, 1, 6, 6], [1, "n"], {"W": np.ones((2, 1, 3, 3))})
    with pytest.raises(UnsupportedLayerError, match=rf"node conv \(Conv\): .*{message}"):
        network_from_onnx(model)


@pytest.mark.parametrize(
    ("op", "attributes", "message"),
    [
        ("MaxPool", {"kernel_shape": [2, 2], "pads": [1, 1, 1, 1]}, "padding"),
        ("AveragePool", {"kernel_shape": [2, 2], "pads": [0, 0, 1, 1]}, "padding"),
        ("MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}, "ceil_mode"),
        ("Transpose", {"perm": [0, 1, 3, 2]}, "reorders the elements"),
        ("BatchNormalization", {"training_mode": 1}, "inference mode"),
    ],
)
def test_other_attributes_out_of_reach(
    op: str, attributes: dict[str, object], message: str
) -> None:
    inputs = ["x", "g", "b", "m", "v"] if op == "BatchNormalization" else ["x"]
    nodes = [
        helper.make_node(op, inputs, ["p"], name="n1", **attributes),
        helper.make_node("Flatten", ["p"], ["y"]),
    ]
    inits = {k: np.ones(1) for k in "gbmv"} if op == "BatchNormalization" else {}
    graph = helper.make_graph(
        nodes,
        "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "n"])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()],
    )
    with pytest.raises(UnsupportedLayerError, match=rf"node n1 \({op}\): .*{message}"):
        network_from_onnx(helper.make_model(graph))


def test_graph_level_errors() -> None:
    w = {"W": np.ones((4, 2))}
    two_inputs = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "two",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(w["W"].astype(np.float32), "W")],
    )
    with pytest.raises(UnsupportedLayerError, match="graph: expected one input tensor, got x, z"):
        network_from_onnx(helper.make_model(two_inputs))
    batch2 = _model([helper.make_node("MatMul", ["x", "W"], ["y"])], [2, 4], [2, 2], w)
    with pytest.raises(UnsupportedLayerError, match="input x: batch dimension is 2"):
        network_from_onnx(batch2)
    dangling = _model(
        [helper.make_node("MatMul", ["x", "W"], ["y"]), helper.make_node("Relu", ["y"], ["r"])],
        [1, 4],
        [1, 2],
        w,
    )
    with pytest.raises(UnsupportedLayerError, match="graph: output y is not the end of the chain"):
        network_from_onnx(dangling)


def test_initializers_listed_as_graph_inputs_are_constants() -> None:
    """Models of IR version < 4 list every initializer among the graph inputs too."""
    w = _rng(18).normal(size=(4, 2)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "old",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("W", TensorProto.FLOAT, [4, 2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(w, "W")],
    )
    net = network_from_onnx(helper.make_model(graph))
    x = torch.rand(3, 4, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(net.forward(x), x.double() @ torch.from_numpy(w).double())
