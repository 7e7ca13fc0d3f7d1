"""The trade gate as an ONNX graph (``onnx/gate.onnx``), built with ``onnx.helper``: ``x [N, D] -> q [N, 1]``.

``x`` holds a signal bar's raw gate inputs in ``GateModel.inputs`` order (the features, side, strength, the
primary probability per horizon). The graph repeats :meth:`GateModel.predict`: each probability becomes the logit
of the signal's direction's probability (clipped as every graph here), every input is standardised with the
target's training statistics, a missing (NaN) input becomes the mean (0), then ``sigmoid(S w + b)``. Metadata
props: ``inputs`` (JSON list). Pure: no files.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from macd_ml.models.ensemble.logistic import EPS
from macd_ml.models.gate.secondary import GateModel
from macd_ml.models.release.onnx_export import OPSET


def _c(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name=name)


def gate_onnx(model: GateModel) -> onnx.ModelProto:
    d, k, s = len(model.inputs), model.n_prob, model.side_index
    f32 = np.float32
    init = [
        _c("mean", model.mean.astype(f32)),
        _c("std", model.std.astype(f32)),
        _c("w", model.weights.astype(f32).reshape(-1, 1)),
        _c("b", np.array([model.bias], dtype=f32)),
        _c("zero", np.array(0.0, dtype=f32)),
    ]
    nodes = []
    z = "x"
    if k:
        init += [
            _c("half", np.array(0.5, dtype=f32)),
            _c("one", np.array(1.0, dtype=f32)),
            _c("lo", np.array(EPS, dtype=f32)),
            _c("hi", np.array(1 - EPS, dtype=f32)),
            _c("side_at", np.array([s], dtype=np.int64)),
            _c("rest_at", np.arange(d - k, dtype=np.int64)),
            _c("prob_at", np.arange(d - k, d, dtype=np.int64)),
        ]
        nodes += [
            helper.make_node("Gather", ["x", "side_at"], ["side"], axis=1),
            helper.make_node("Gather", ["x", "rest_at"], ["rest"], axis=1),
            helper.make_node("Gather", ["x", "prob_at"], ["p"], axis=1),
            helper.make_node("Sub", ["p", "half"], ["p_c"]),
            helper.make_node("Mul", ["side", "p_c"], ["p_sc"]),
            helper.make_node("Add", ["p_sc", "half"], ["p_dir"]),
            helper.make_node("Clip", ["p_dir", "lo", "hi"], ["p_clip"]),
            helper.make_node("Sub", ["one", "p_clip"], ["p_q"]),
            helper.make_node("Div", ["p_clip", "p_q"], ["odds"]),
            helper.make_node("Log", ["odds"], ["logit"]),
            helper.make_node("Concat", ["rest", "logit"], ["z"], axis=1),
        ]
        z = "z"
    nodes += [
        helper.make_node("Sub", [z, "mean"], ["zc"]),
        helper.make_node("Div", ["zc", "std"], ["zs"]),
        helper.make_node("IsNaN", ["zs"], ["missing"]),
        helper.make_node("Where", ["missing", "zero", "zs"], ["zf"]),
        helper.make_node("MatMul", ["zf", "w"], ["zw"]),
        helper.make_node("Add", ["zw", "b"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["q"]),
    ]
    graph = helper.make_graph(
        nodes,
        "trade_gate",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", d])],
        [helper.make_tensor_value_info("q", TensorProto.FLOAT, ["N", 1])],
        init,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    m.ir_version = 8
    m.metadata_props.append(onnx.StringStringEntryProto(key="inputs", value=json.dumps(model.inputs)))
    onnx.checker.check_model(m)
    return m


def graph_inputs(model: onnx.ModelProto) -> list[str]:
    return json.loads({p.key: p.value for p in model.metadata_props}["inputs"])
