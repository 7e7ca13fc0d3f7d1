"""A small, complete metrics document (as the flow writes it) for report tests."""

from __future__ import annotations


def metrics_document() -> dict:
    def score(a, b):
        return {"oof_auc": a, "test_auc": b, "n_oof": 1000, "n_test": 300}

    shipped = {
        "shipped": "meta",
        "oof_auc": 0.56,
        "val_auc": 0.55,
        "test_auc": 0.54,
        "gap_abs": 0.01,
        "gap_rel": 0.018,
        "gap_combined_se": 0.02,
        "candidates": {
            "meta": {"val_auc": 0.55, "C": 0.1, "test_auc": 0.54},
            "mean": {"val_auc": 0.54, "test_auc": 0.53},
            "best:xgb": {"val_auc": 0.545, "test_auc": 0.535},
        },
        "c_scores": {"0.1": 0.55},
        "weights": {"xgb": 0.7, "lgb": 0.3},
        "models": ["xgb", "lgb"],
        "dropped": {},
        "n_train": 1000,
        "n_val": 600,
        "n_test": 300,
        "train_last": "2024-01-01T00:00:00+00:00",
        "holdout_first": "2024-02-01T00:00:00+00:00",
    }
    return {
        "target": "ETHUSDT",
        "cross": ["BTCUSDT"],
        "horizons": [12],
        "n_features": 10,
        "n_rows": 2000,
        "n_oof": 1000,
        "n_test": 300,
        "labels": {"12": {"defined": 1900, "up_share": 0.5}},
        "input": {
            "rows": {"ETHUSDT": 2200, "BTCUSDT": 2200},
            "span": {
                "ETHUSDT": ["2023-01-01T00:00:00+00:00", "2024-03-01T00:00:00+00:00"],
                "BTCUSDT": ["2023-01-01T00:00:00+00:00", "2024-03-01T00:00:00+00:00"],
            },
            "gaps": {
                "ETHUSDT": {"n_gaps": 0, "longest_hours": 0, "missing_hours": 0, "gaps": []},
                "BTCUSDT": {"n_gaps": 1, "longest_hours": 2, "missing_hours": 2, "gaps": []},
            },
        },
        "folds": [],
        "holdout": {"rows": 300, "first": None, "last": None},
        "models": {"xgb": {"12": score(0.55, 0.54)}, "lgb": {"12": score(0.54, 0.53)}},
        "meta": {"12": shipped},
        "diversity": {
            "12": {
                "models": ["xgb", "lgb"],
                "matrix": [[1.0, 0.5], [0.5, 1.0]],
                "std": {"xgb": 0.1, "lgb": 0.1},
                "redundant_pairs": [],
                "collapsed": [],
            }
        },
        "training": {"xgb": {"folds": {}, "collapsed": False}, "lgb": {"folds": {}, "collapsed": False}},
        "auc_se": {"12": {"oof": 0.06, "test": 0.11}},
    }
