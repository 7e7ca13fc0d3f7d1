"""Benchmark for a CUDA machine: the sequence nets' training on the GPU (bf16 autocast) and XGBoost's (``device=cuda``)
against the CPU path in the same run, and ONNX scoring of the exported LSTM with every onnxruntime provider
that answers.

    python bench/bench_gpu.py [--hours 20000] [--epochs 8] [--out FILE.json]

A synthetic market (the same generator as `make run`), the default features, labels and folds; each of LSTM and
TFT is fitted on the refit split (all development rows, inner slice at the end) once on CUDA and once on the CPU
with the same seed and a fixed epoch budget (patience = epochs, so both run every epoch). Prints seconds per fit,
seconds per epoch, the speed-up, and the holdout AUC of each (bf16 on the GPU vs float32 on the CPU: close, not
equal). XGBoost (when installed) fits the same split with a fixed round budget on each device. The CPU path
uses every core (``MACD_ML_PARALLEL_TASKS=1``). Needs torch, numpy, scikit-learn, polars, pydantic, safetensors,
onnx and onnxruntime; XGBoost is optional, LightGBM is not imported. Figures only, never a pass/fail.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=int, default=20_000)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--out", help="also write the figures to this JSON file")
    ap.add_argument("--xgb-rounds", type=int, default=300)
    args = ap.parse_args()
    os.environ.setdefault("MACD_ML_PARALLEL_TASKS", "1")  # one fit at a time here: the CPU path gets every core

    import torch

    from macd_ml.features.build import build_features
    from macd_ml.features.ingest import Candles, Market
    from macd_ml.features.labels import align_labels, make_labels
    from macd_ml.features.splits import FoldSpec, make_folds
    from macd_ml.features.synth import synth_market
    from macd_ml.models.evaluation.stats import auc
    from macd_ml.models.learners.base import Rows
    from macd_ml.models.learners.device import cuda_available
    from macd_ml.models.learners.lstm import LSTMModel
    from macd_ml.models.learners.sequence import SequenceParams
    from macd_ml.models.learners.tft import TFTModel, TFTParams
    from macd_ml.models.learners.train import build_dataset

    horizons = [5, 12, 24]
    gpu = cuda_available()
    figures: dict = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if gpu else "no CUDA device",
        "cpu_cores": os.cpu_count(),
        "hours": args.hours,
        "epochs": args.epochs,
    }
    t0 = time.perf_counter()
    m = synth_market(hours=args.hours, seed=7, gaps=2)
    market = Market(Candles("ETHUSDT", None, "e", m["ETHUSDT"]), (Candles("BTCUSDT", None, "b", m["BTCUSDT"]),))
    table = build_features(market)
    labels = make_labels(m["ETHUSDT"], horizons)
    labels = align_labels(table.frame, labels)
    data = build_dataset(table.frame, labels, table.names, horizons, 1)
    folds = make_folds(table.frame["timestamp"], horizons, FoldSpec())
    fold = folds.refit
    hold = Rows.span(folds.holdout.start, folds.holdout.stop)
    figures["features_seconds"] = round(time.perf_counter() - t0, 2)
    figures["rows"] = {"fit": len(fold.fit), "holdout": len(hold.idx), "features": len(table.names)}
    print(json.dumps({k: figures[k] for k in ("torch", "device", "cpu_cores", "rows")}), flush=True)

    # one-time costs belong to no model's fit: the process's first optimizer imports torch._dynamo (1-3 s), and
    # on a GPU the CUDA context, cuDNN and cuBLAS start up (seconds)
    for device in (["cuda"] if gpu else []) + ["cpu"]:
        warm = torch.nn.LSTM(8, 8, batch_first=True).to(device)
        opt = torch.optim.AdamW(warm.parameters(), fused=True)
        warm(torch.randn(4, 6, 8, device=device))[0].sum().backward()
        opt.step()
    if gpu:
        torch.cuda.synchronize()
    fit_rows = Rows.span(fold.fit.start, fold.fit.stop)
    es_rows = Rows.span(fold.early_stop.start, fold.early_stop.stop)
    results = {}
    for name, cls, params_cls in (("lstm", LSTMModel, SequenceParams), ("tft", TFTModel, TFTParams)):
        for device in (["cuda"] if gpu else []) + ["cpu"]:
            params = params_cls(max_epochs=args.epochs, patience=args.epochs, device=device)
            model = cls(params, table.names, horizons)
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            model.fit(data, fit_rows, es_rows)
            if device == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t
            p = model.predict(data, hold)
            y = data.Y[hold.idx]
            results[f"{name}/{device}"] = {
                "fit_seconds": round(seconds, 2),
                "seconds_per_epoch": round(seconds / max(model.epochs_run, 1), 3),
                "epochs": model.epochs_run,
                "holdout_auc": {str(h): auc(y[:, j], p[:, j]) for j, h in enumerate(horizons)},
            }
            if device == "cuda":  # the early-stopping path: eval on CUDA (bf16, the TFT's shared bars) vs CPU fp32
                results[f"{name}/{device}"]["cuda_eval_vs_cpu_max_abs"] = _cuda_eval_gap(model, data, hold, p)
            print(name, device, json.dumps(results[f"{name}/{device}"]), flush=True)
            if name == "lstm" and device == "cpu":
                try:
                    results["onnx"] = _onnx_scoring(model, data, hold)
                except ImportError as exc:  # onnx or onnxruntime not installed on this machine
                    results["onnx"] = f"skipped: {exc}"
        if gpu:
            cpu, cuda = results[f"{name}/cpu"]["seconds_per_epoch"], results[f"{name}/cuda"]["seconds_per_epoch"]
            results[f"{name}/speedup_per_epoch"] = round(cpu / cuda, 2) if cuda else None
    results.update(_xgboost(data, table.names, horizons, fit_rows, es_rows, hold, args.xgb_rounds, gpu))
    figures["results"] = results
    print(json.dumps(figures, indent=1, default=str))
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=1, default=str))
    return 0


def _cuda_eval_gap(model, data, hold, p_cpu) -> float:
    """Max |p| difference between the fitted net evaluated on CUDA as during training (bf16 autocast; the TFT
    encodes each distinct bar once) and its CPU float32 ``predict`` on the same holdout rows."""
    import torch

    from macd_ml.models.learners.sequence import normalise

    Xn = normalise(data.columns(model.feature_names), model.mean, model.std)
    model.net.to("cuda")
    try:
        logits = model.predict_logits(Xn, hold.idx, data.segment_start, "cuda")
    finally:
        model.net.to("cpu")
    torch.cuda.synchronize()
    return float(np.abs(1 / (1 + np.exp(-logits.astype(np.float64))) - p_cpu).max())


def _xgboost(data, names, horizons, fit_rows, es_rows, hold, rounds: int, gpu: bool) -> dict:
    """XGBoost on the same split, ``rounds`` trees per horizon (early stopping off), on CUDA and on the CPU."""
    try:
        import xgboost
    except ImportError:
        print("xgboost: not installed here; skipped", flush=True)
        return {"xgb": "not installed"}
    import macd_ml.models.learners.gbdt as gbdt
    from macd_ml.models.evaluation.stats import auc

    out: dict = {}
    for device in (["cuda"] if gpu else []) + ["cpu"]:
        gbdt.cuda_available = lambda d=device: d == "cuda"  # the model picks its device through this probe
        params = gbdt.XGBParams(max_rounds=rounds, min_rounds=rounds, early_stopping_rounds=rounds)
        model = gbdt.XGBModel(params, names, horizons)
        t = time.perf_counter()
        model.fit(data, fit_rows, es_rows)
        seconds = time.perf_counter() - t
        p = model.predict(data, hold)
        y = data.Y[hold.idx]
        out[f"xgb/{device}"] = {
            "xgboost": xgboost.__version__,
            "fit_seconds": round(seconds, 2),
            "rounds_per_horizon": rounds,
            "holdout_auc": {str(h): auc(y[:, j], p[:, j]) for j, h in enumerate(horizons)},
        }
        print("xgb", device, json.dumps(out[f"xgb/{device}"]), flush=True)
    if gpu:
        out["xgb/speedup"] = round(out["xgb/cpu"]["fit_seconds"] / out["xgb/cuda"]["fit_seconds"], 2)
    return out


def _onnx_scoring(model, data, hold) -> dict:
    """The exported LSTM (normalisation inside the graph) scored on the holdout with each provider that answers."""
    import onnxruntime as ort

    from macd_ml.features.segments import window_index
    from macd_ml.models.release.onnx_export import input_window, sequence_onnx

    graph = sequence_onnx(model).SerializeToString()
    w = input_window(model)
    x = data.X[window_index(hold.idx, data.segment_start, w)].astype(np.float32)
    native = model.predict(data, hold)
    out = {}
    for provider in ort.get_available_providers():
        if provider not in ("CUDAExecutionProvider", "CPUExecutionProvider"):
            continue
        try:
            sess = ort.InferenceSession(graph, providers=[provider])
            name = sess.get_inputs()[0].name
            sess.run(None, {name: x[:1]})
            t = time.perf_counter()
            p = sess.run(None, {name: x})[0]
            out[provider] = {
                "seconds_holdout": round(time.perf_counter() - t, 4),
                "rows": len(x),
                "max_abs_vs_native": float(np.abs(p - native).max()),
                "used": sess.get_providers()[0],
            }
        except Exception as exc:  # noqa: BLE001 - a provider that does not answer is a figure too
            out[provider] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    return out


if __name__ == "__main__":
    sys.exit(main())
