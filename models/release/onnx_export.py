"""ONNX graphs for everything a bot needs: one file per base model, the shipped predictor, and ``ensemble.onnx``.

- Trees (LightGBM, XGBoost): one booster per horizon converted with onnxmltools (float32 input, zipmap off),
  brought to one opset and joined into a graph ``x [N, f] -> p [N, H]`` (the probability of "up" per horizon).
- Sequence nets (LSTM, TFT): ``torch.onnx.export`` of the net *with its normalisation inside* (mean/std fitted on
  training rows, clip at ±8, sigmoid at the end): ``x [N, window, f]`` of raw features ``-> p [N, H]``.
- The shipped predictor per horizon (meta-learner on standardised logits, equal-weight mean, or one model) is
  built with ``onnx.helper``: inputs ``{model} [N, H]``, output ``shipped [N, H]``.
- ``ensemble.onnx`` wires them behind one input, ``bars [N, lookback, F]``: the last ``lookback`` bars of raw
  features in the feature table's column order (sequence windows clamped at a gap's first bar, as in training).
  Outputs: ``shipped [N, H]`` and every base model's ``{model} [N, H]``. Metadata props carry the horizons,
  model names, feature names and lookback.

Pure: no Prefect, no files except through the caller.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from macd_ml.models.ensemble.calibration import Calibrator
from macd_ml.models.ensemble.logistic import EPS
from macd_ml.models.ensemble.predictor import Predictor
from macd_ml.models.learners.base import Model

OPSET = 17  # the default-domain opset of every graph here (trees are converted at 15, then brought up)
ML_OPSET = 1
TREE_CONVERTER_OPSET = 15


# --------------------------------------------------------------------------------------------- graph helpers


def _const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name=name)


def _to_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    """Bring a converted graph to ``OPSET``. A graph with only ai.onnx.ml nodes has nothing to convert."""
    if not any(n.domain in ("", "ai.onnx") for n in model.graph.node):
        for imp in model.opset_import:
            if imp.domain in ("", "ai.onnx"):
                imp.version = OPSET
        if not any(imp.domain in ("", "ai.onnx") for imp in model.opset_import):
            model.opset_import.append(helper.make_opsetid("", OPSET))
        return model
    from onnx import version_converter

    return version_converter.convert_version(model, OPSET)


def _prefixed(model: onnx.ModelProto, prefix: str) -> onnx.GraphProto:
    from onnx import compose

    return compose.add_prefix(model, prefix=prefix).graph


def _model(graph: onnx.GraphProto, meta: dict[str, str] | None = None) -> onnx.ModelProto:
    m = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("ai.onnx.ml", ML_OPSET)]
    )
    m.ir_version = 8
    for k, v in (meta or {}).items():
        m.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    onnx.checker.check_model(m)
    return m


def _inline(graph: onnx.GraphProto, sub: onnx.GraphProto, inputs: dict[str, str], outputs: dict[str, str]) -> None:
    """Copy a (prefixed) subgraph into ``graph``: feed its inputs from existing names, expose its outputs under
    new names (Identity nodes, so the subgraph stays untouched)."""
    for sub_in, src in inputs.items():
        graph.node.append(helper.make_node("Identity", [src], [sub_in]))
    graph.node.extend(sub.node)
    graph.initializer.extend(sub.initializer)
    for sub_out, dst in outputs.items():
        graph.node.append(helper.make_node("Identity", [sub_out], [dst]))


# --------------------------------------------------------------------------------------------- base models


def _booster_onnx(model: Model, h: int) -> onnx.ModelProto:
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    from macd_ml.models.learners.gbdt import LGBModel  # here: the scorer imports this module and needs no LightGBM

    f = len(model.feature_names)
    booster = model.boosters[h]  # type: ignore[attr-defined]
    types = [("x", FloatTensorType([None, f]))]
    if isinstance(model, LGBModel):  # lgb, lgb_cross and the reference
        converted = onnxmltools.convert_lightgbm(
            booster, initial_types=types, zipmap=False, target_opset=TREE_CONVERTER_OPSET
        )
    else:
        plain = booster.copy()  # the converter reads features as f0..fN
        plain.feature_names = [f"f{i}" for i in range(f)]
        plain.feature_types = None
        converted = onnxmltools.convert_xgboost(plain, initial_types=types, target_opset=TREE_CONVERTER_OPSET)
    return _to_opset(converted)


def tree_onnx(model: Model) -> onnx.ModelProto:
    """``x [N, f] -> p [N, H]``: the per-horizon boosters of a LightGBM/XGBoost model in one graph."""
    f = len(model.feature_names)
    g = helper.make_graph(
        [],
        f"{model.name}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, f])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, [None, len(model.horizons)])],
    )
    g.initializer.extend([_const("one", np.array(1, dtype=np.int64)), _const("axis1", np.array([1], dtype=np.int64))])
    cols = []
    for h in model.horizons:
        sub = _prefixed(_booster_onnx(model, h), f"h{h}/")
        _inline(g, sub, {f"h{h}/x": "x"}, {f"h{h}/probabilities": f"h{h}_probs"})
        g.node.append(helper.make_node("Gather", [f"h{h}_probs", "one"], [f"h{h}_up"], axis=1))
        g.node.append(helper.make_node("Unsqueeze", [f"h{h}_up", "axis1"], [f"h{h}_col"]))
        cols.append(f"h{h}_col")
    g.node.append(helper.make_node("Concat", cols, ["p"], axis=1))
    return _model(
        g,
        {"model": model.name, "horizons": json.dumps(model.horizons), "feature_names": json.dumps(model.feature_names)},
    )


def sequence_onnx(model: Model) -> onnx.ModelProto:
    """``x [N, window, f]`` raw features ``-> p [N, H]``, normalisation and sigmoid inside the graph."""
    import torch
    from torch import nn

    net = model._module()  # type: ignore[attr-defined]
    mean = torch.from_numpy(np.asarray(model.mean, dtype=np.float32))  # type: ignore[attr-defined]
    std = torch.from_numpy(np.asarray(model.std, dtype=np.float32))  # type: ignore[attr-defined]

    class Scored(nn.Module):
        mean: torch.Tensor
        std: torch.Tensor

        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.register_buffer("mean", mean)
            self.register_buffer("std", std)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = torch.clamp((x - self.mean) / self.std, -8.0, 8.0)
            return torch.sigmoid(self.net(z))

    window = model.params.window  # type: ignore[attr-defined]
    dummy = torch.zeros(2, window, len(model.feature_names), dtype=torch.float32)
    buf = io.BytesIO()
    scored = Scored().eval()
    with torch.no_grad():
        torch.onnx.export(
            scored,
            (dummy,),
            buf,  # type: ignore[arg-type]  # (a file-like object is accepted)
            input_names=["x"],
            output_names=["p"],
            opset_version=OPSET,
            dynamic_axes={"x": {0: "n"}, "p": {0: "n"}},
            dynamo=False,
        )
    m = onnx.load_from_string(buf.getvalue())
    for k, v in {
        "model": model.name,
        "horizons": json.dumps(model.horizons),
        "feature_names": json.dumps(model.feature_names),
        "window": str(window),
    }.items():
        m.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    onnx.checker.check_model(m)
    return m


def model_onnx(model: Model) -> onnx.ModelProto:
    return sequence_onnx(model) if hasattr(model, "net") else tree_onnx(model)


def input_window(model: Model) -> int:
    """Bars a model reads: its window for a sequence net, 1 (the last bar) for trees."""
    return int(model.params.window) if hasattr(model, "net") else 1  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------- shipped predictor


def predictor_onnx(predictors: dict[str, Predictor], horizons: list[int], models: list[str]) -> onnx.ModelProto:
    """Inputs ``{model} [N, H]`` for every model, output ``shipped [N, H]``: per horizon the meta-learner (clip,
    logit, standardise, weights, sigmoid), the equal-weight mean, or one model's column."""
    H = len(horizons)
    g = helper.make_graph(
        [],
        "shipped",
        [helper.make_tensor_value_info(m, TensorProto.FLOAT, [None, H]) for m in models],
        [helper.make_tensor_value_info("shipped", TensorProto.FLOAT, [None, H])],
    )
    g.initializer.extend(
        [
            _const("axis1", np.array([1], dtype=np.int64)),
            _const("lo", np.array(EPS, dtype=np.float32)),
            _const("hi", np.array(1 - EPS, dtype=np.float32)),
            _const("one_f", np.array(1.0, dtype=np.float32)),
        ]
    )
    cols = []
    for j, h in enumerate(horizons):
        pred = predictors[str(h)]
        g.initializer.append(_const(f"j{h}", np.array(j, dtype=np.int64)))
        parts = []
        for m in pred.models:
            g.node.append(helper.make_node("Gather", [m, f"j{h}"], [f"h{h}_in_{m}"], axis=1))
            g.node.append(helper.make_node("Unsqueeze", [f"h{h}_in_{m}", "axis1"], [f"h{h}_in_{m}_col"]))
            parts.append(f"h{h}_in_{m}_col")
        g.node.append(helper.make_node("Concat", parts, [f"h{h}_P"], axis=1))
        out = f"h{h}_out"
        if pred.kind == "best":
            g.node.append(helper.make_node("Identity", [f"h{h}_P"], [out]))
        elif pred.kind == "mean":
            g.node.append(helper.make_node("ReduceMean", [f"h{h}_P"], [out], axes=[1], keepdims=1))
        else:
            g.initializer.extend(
                [
                    _const(f"h{h}_mu", np.asarray(pred.mean, dtype=np.float32)),
                    _const(f"h{h}_sd", np.asarray(pred.std, dtype=np.float32)),
                    _const(f"h{h}_w", np.asarray(pred.weights, dtype=np.float32).reshape(-1, 1)),
                    _const(f"h{h}_b", np.asarray([pred.intercept], dtype=np.float32)),
                ]
            )
            g.node.extend(
                [
                    helper.make_node("Clip", [f"h{h}_P", "lo", "hi"], [f"h{h}_Pc"]),
                    helper.make_node("Sub", ["one_f", f"h{h}_Pc"], [f"h{h}_Q"]),
                    helper.make_node("Div", [f"h{h}_Pc", f"h{h}_Q"], [f"h{h}_odds"]),
                    helper.make_node("Log", [f"h{h}_odds"], [f"h{h}_L"]),
                    helper.make_node("Sub", [f"h{h}_L", f"h{h}_mu"], [f"h{h}_Lc"]),
                    helper.make_node("Div", [f"h{h}_Lc", f"h{h}_sd"], [f"h{h}_Z"]),
                    helper.make_node("MatMul", [f"h{h}_Z", f"h{h}_w"], [f"h{h}_zw"]),
                    helper.make_node("Add", [f"h{h}_zw", f"h{h}_b"], [f"h{h}_logit"]),
                    helper.make_node("Sigmoid", [f"h{h}_logit"], [out]),
                ]
            )
        cols.append(_calibrated(g, pred.calibration, f"h{h}", out))
    g.node.append(helper.make_node("Concat", cols, ["shipped"], axis=1))
    return _model(
        g, {"horizons": json.dumps(horizons), "predictors": json.dumps({h: p.label for h, p in predictors.items()})}
    )


def _calibrated(g: onnx.GraphProto, cal: Calibrator, name: str, p: str) -> str:
    """Append ``cal`` (models/ensemble/calibration.py) to the [N, 1] probability ``p``; returns the calibrated
    output."""
    if cal.kind == "none":
        return p
    out = f"{name}_cal"
    if cal.kind == "platt":  # sigmoid(a * logit(clip(p)) + b)
        g.initializer.extend(
            [_const(f"{name}_ca", np.array(cal.a, dtype=np.float32)), _const(f"{name}_cb", np.array(cal.b, np.float32))]
        )
        g.node.extend(
            [
                helper.make_node("Clip", [p, "lo", "hi"], [f"{name}_cpc"]),
                helper.make_node("Sub", ["one_f", f"{name}_cpc"], [f"{name}_cq"]),
                helper.make_node("Div", [f"{name}_cpc", f"{name}_cq"], [f"{name}_codds"]),
                helper.make_node("Log", [f"{name}_codds"], [f"{name}_cl"]),
                helper.make_node("Mul", [f"{name}_cl", f"{name}_ca"], [f"{name}_cal_z"]),
                helper.make_node("Add", [f"{name}_cal_z", f"{name}_cb"], [f"{name}_cal_zb"]),
                helper.make_node("Sigmoid", [f"{name}_cal_zb"], [out]),
            ]
        )
        return out
    # isotonic: y0 + sum_k slope_k * min(max(p - x_k, 0), dx_k)  [N,1] - [K] -> [N,K] -> MatMul [K,1]
    x0, dx, slope = cal.segments()
    g.initializer.extend(
        [
            _const(f"{name}_ix", x0.astype(np.float32)),
            _const(f"{name}_idx", dx.astype(np.float32)),
            _const(f"{name}_islope", slope.astype(np.float32).reshape(-1, 1)),
            _const(f"{name}_iy0", np.array([cal.y[0]], dtype=np.float32)),
            _const(f"{name}_zero", np.array(0.0, dtype=np.float32)),
        ]
    )
    g.node.extend(
        [
            helper.make_node("Sub", [p, f"{name}_ix"], [f"{name}_id"]),
            helper.make_node("Max", [f"{name}_id", f"{name}_zero"], [f"{name}_ipos"]),
            helper.make_node("Min", [f"{name}_ipos", f"{name}_idx"], [f"{name}_iclip"]),
            helper.make_node("MatMul", [f"{name}_iclip", f"{name}_islope"], [f"{name}_isum"]),
            helper.make_node("Add", [f"{name}_isum", f"{name}_iy0"], [out]),
        ]
    )
    return out


# --------------------------------------------------------------------------------------------- the ensemble


@dataclass(frozen=True)
class EnsembleSpec:
    """What ``ensemble.onnx`` reads and returns (also written into its metadata)."""

    feature_names: list[str]
    horizons: list[int]
    models: list[str]
    lookback: int


def ensemble_onnx(
    feature_names: list[str],
    horizons: list[int],
    parts: dict[str, tuple[onnx.ModelProto, list[str], int]],
    shipped: onnx.ModelProto,
) -> tuple[onnx.ModelProto, EnsembleSpec]:
    """``parts``: model name -> (its graph, its feature names, bars it reads). One input ``bars [N, lookback, F]``."""
    F = len(feature_names)
    H = len(horizons)
    lookback = max(w for _, _, w in parts.values())
    models = list(parts)
    g = helper.make_graph(
        [],
        "ensemble",
        [helper.make_tensor_value_info("bars", TensorProto.FLOAT, [None, lookback, F])],
        [helper.make_tensor_value_info("shipped", TensorProto.FLOAT, [None, H])]
        + [helper.make_tensor_value_info(m, TensorProto.FLOAT, [None, H]) for m in models],
    )
    g.initializer.extend(
        [
            _const("last", np.array(lookback - 1, dtype=np.int64)),
            _const("ax1", np.array([1], dtype=np.int64)),
            _const("end", np.array([lookback], dtype=np.int64)),
        ]
    )
    g.node.append(helper.make_node("Gather", ["bars", "last"], ["last_bar"], axis=1))  # [N, F]
    position = {n: i for i, n in enumerate(feature_names)}
    for m, (graph, names, window) in parts.items():
        missing = [n for n in names if n not in position]
        if missing:
            raise ValueError(f"{m} reads features the table does not have: {missing[:3]}")
        g.initializer.append(_const(f"{m}__cols", np.array([position[n] for n in names], dtype=np.int64)))
        if window == 1:
            g.node.append(helper.make_node("Gather", ["last_bar", f"{m}__cols"], [f"{m}__x"], axis=1))
        else:
            g.initializer.append(_const(f"{m}__start", np.array([lookback - window], dtype=np.int64)))
            g.node.append(helper.make_node("Slice", ["bars", f"{m}__start", "end", "ax1"], [f"{m}__bars"]))
            g.node.append(helper.make_node("Gather", [f"{m}__bars", f"{m}__cols"], [f"{m}__x"], axis=2))
        _inline(g, _prefixed(graph, f"{m}/"), {f"{m}/x": f"{m}__x"}, {f"{m}/p": m})
    _inline(
        g, _prefixed(shipped, "shipped/"), {f"shipped/{m}": m for m in _inputs(shipped)}, {"shipped/shipped": "shipped"}
    )
    spec = EnsembleSpec(feature_names=list(feature_names), horizons=list(horizons), models=models, lookback=lookback)
    meta = {
        "feature_names": json.dumps(spec.feature_names),
        "horizons": json.dumps(spec.horizons),
        "models": json.dumps(spec.models),
        "lookback": str(spec.lookback),
        "inputs": "bars: float32 [N, lookback, F], the last lookback bars of raw features, oldest first",
        "outputs": "shipped: P(up) per horizon; one output per base model, same shape",
    }
    return _model(g, meta), spec


def _inputs(model: onnx.ModelProto) -> list[str]:
    inits = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def ensemble_spec(model: onnx.ModelProto) -> EnsembleSpec:
    meta = {p.key: p.value for p in model.metadata_props}
    return EnsembleSpec(
        feature_names=json.loads(meta["feature_names"]),
        horizons=json.loads(meta["horizons"]),
        models=json.loads(meta["models"]),
        lookback=int(meta["lookback"]),
    )
