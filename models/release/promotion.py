"""Champion / challenger: before ``current`` moves, the new run (challenger) and the promoted one (champion) are
scored on the newest window both can see, and the challenger is promoted only if it is not worse by more than a
margin (default 1 SE of the AUC, SE = sqrt(h / 3n)).

The window is the challenger's holdout (rows it never fitted, early-stopped or chose on), cut to the bars after
the champion's own holdout began (so neither has fitted them), at the primary horizon, labelled rows only. The
champion is scored by its own ``ensemble.onnx`` on features built with its own feature spec from the same candles;
the challenger by its shipped holdout probabilities (equal to its ensemble's, by the parity check).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from macd_ml.artifacts import catalog
from macd_ml.artifacts.store import ArtifactRef, IntegrityError, read_json, read_parquet, run_artifacts, verify_run
from macd_ml.errors import DataError
from macd_ml.features.build import FeatureTable
from macd_ml.features.spec import FeatureSpec
from macd_ml.models.evaluation.drift import prediction_shift
from macd_ml.models.evaluation.metrics import Decision, Metrics
from macd_ml.models.evaluation.stats import auc, auc_se


class PromotionSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    margin_se: float = Field(
        default=1.0,
        ge=0,
        title="Challenger margin (SE)",
        description="the challenger may be worse than the champion by at most this many SE",
    )
    min_window_rows: int = Field(
        default=100,
        ge=1,
        title="Fewest comparable rows",
        description="fewer comparable rows: no comparison, the gates decide",
    )
    force: bool = Field(
        default=False,
        title="Promote regardless of the comparison",
        description="promote whatever the comparison says (a logged human override)",
    )
    max_prediction_psi: float = Field(
        default=0.25,
        gt=0,
        title="Prediction drift PSI limit",
        description="drift: PSI of the challenger's shipped probability against the champion's on the same bars "
        "above this is flagged (a warning in promotion.json and the report; it decides nothing)",
    )


def decide(
    challenger_files: dict[str, ArtifactRef],
    challenger: Metrics,
    champion_dir: Path | None,
    data_dir: str,
    horizon: int,
    spec: PromotionSpec,
    challenger_id: str | None = None,
    features: FeaturesFor | None = None,
) -> Decision:
    """``features(target, cross, spec, gap_tolerance_hours)`` gives the feature table the champion reads (default:
    built from the candle files in ``data_dir``; the pipeline passes one that reuses the run's validated candles
    and, for the same spec, its feature table: tasks/candles.py, tasks/table.py)."""

    def unopposed(reason: str, champion: str | None = None) -> Decision:
        return Decision(
            promote=True,
            reason=reason,
            champion=champion,
            challenger=challenger_id,
            horizon=horizon,
            margin_se=spec.margin_se,
        )

    if champion_dir is None:
        return unopposed("no champion yet")
    champion_id = Path(champion_dir).resolve().name
    if challenger_id is not None and champion_id == challenger_id:
        return unopposed("the challenger is the champion (an unchanged re-run)", champion_id)
    try:
        files = run_artifacts(champion_dir, verify_run(champion_dir))
        champ = Metrics.model_validate(read_json(files[catalog.METRICS]))
    except (IntegrityError, KeyError, ValueError) as exc:
        return unopposed(f"the champion cannot be read ({str(exc).splitlines()[0]}); the gates decide", champion_id)
    if champ.target != challenger.target:
        return unopposed(f"the champion predicts {champ.target}, not {challenger.target}", champion_id)
    if catalog.ENSEMBLE_ONNX not in files:
        return unopposed("the champion has no ensemble.onnx (made before export existed)", champion_id)

    hold = read_parquet(challenger_files[catalog.HOLDOUT_PREDICTIONS]).select(
        catalog.TIMESTAMP, catalog.label_column(horizon)
    )
    shipped = read_parquet(challenger_files[catalog.SHIPPED_HOLDOUT]).select(
        catalog.TIMESTAMP, catalog.shipped_column(horizon)
    )
    window = hold.join(shipped, on=catalog.TIMESTAMP).filter(pl.col(catalog.label_column(horizon)).is_not_null())
    if champ.holdout.first is not None:
        window = window.filter(pl.col(catalog.TIMESTAMP) >= champ.holdout.first)
    try:
        champ_scores = _score_champion(files, features or _from_files(data_dir), window[catalog.TIMESTAMP], horizon)
    except (DataError, KeyError, ValueError) as exc:
        return unopposed(f"the champion cannot score this data ({str(exc).splitlines()[0]})", champion_id)
    window = window.join(champ_scores, on=catalog.TIMESTAMP, how="inner")
    n = window.height
    if n < spec.min_window_rows:
        return unopposed(
            f"only {n} comparable rows (< {spec.min_window_rows}); no comparison, the gates decide", champion_id
        )
    y = window[catalog.label_column(horizon)].cast(pl.Float64).to_numpy()
    a_new = auc(y, window[catalog.shipped_column(horizon)].to_numpy())
    a_old = auc(y, window["champion"].to_numpy())
    se = auc_se(n, horizon)
    if a_new is None or a_old is None:
        return unopposed("one class only in the comparable window; the gates decide", champion_id)
    promote = a_new >= a_old - spec.margin_se * se
    reason = f"challenger AUC {a_new:.3f} vs champion {a_old:.3f} on {n} rows at h={horizon}: " + (
        "not worse than the margin" if promote else f"worse by more than {spec.margin_se:g} SE ({se:.3f})"
    )
    forced = spec.force and not promote
    if forced:
        reason += "; promoted anyway (force)"
    first, last = window[catalog.TIMESTAMP].min(), window[catalog.TIMESTAMP].max()
    shift = prediction_shift(window["champion"].to_numpy(), window[catalog.shipped_column(horizon)].to_numpy())
    if shift["psi"] is not None:
        shift["limit"] = spec.max_prediction_psi
        shift["flagged"] = shift["psi"] > spec.max_prediction_psi
    return Decision(
        promote=promote or spec.force,
        reason=reason,
        forced=forced,
        champion=champion_id,
        challenger=challenger_id,
        horizon=horizon,
        window_first=first if isinstance(first, datetime) else None,
        window_last=last if isinstance(last, datetime) else None,
        n_rows=n,
        challenger_auc=a_new,
        champion_auc=a_old,
        se=se,
        margin_se=spec.margin_se,
        prediction_shift=shift,
    )


FeaturesFor = Callable[[str, list[str], FeatureSpec, int], FeatureTable]


def _from_files(data_dir: str) -> FeaturesFor:
    def features(target: str, cross: list[str], spec: FeatureSpec, gap: int) -> FeatureTable:
        from macd_ml.features.build import build_features
        from macd_ml.features.ingest import load_market

        return build_features(load_market(data_dir, target, cross), spec, gap)

    return features


def _score_champion(
    files: dict[str, ArtifactRef], features: FeaturesFor, timestamps: pl.Series, horizon: int
) -> pl.DataFrame:
    """The champion's shipped probability at ``horizon`` for these bars, from raw candles with its own spec."""
    import onnx

    from macd_ml.artifacts.store import verify
    from macd_ml.models.release.onnx_export import ensemble_spec
    from macd_ml.models.release.scoring import score_features, session

    meta = read_json(files[catalog.FEATURES_META])
    config = read_json(files[catalog.CONFIG]) if catalog.CONFIG in files else {}
    gap = int(meta.get("gap_tolerance_hours", config.get("gap_tolerance_hours", 1)))
    table = features(meta["target"], list(meta["cross"]), FeatureSpec.model_validate(meta["spec"]), gap)
    ens_path = verify(files[catalog.ENSEMBLE_ONNX])
    spec = ensemble_spec(onnx.load(str(ens_path)))
    if horizon not in spec.horizons:
        raise ValueError(f"the champion has no {horizon} h horizon")
    frame = table.frame.with_row_index("_row")
    rows = frame.join(pl.DataFrame({catalog.TIMESTAMP: timestamps}), on=catalog.TIMESTAMP, how="inner")[
        "_row"
    ].to_numpy()
    sess, _ = session(ens_path)
    scored = score_features(sess, spec, table.frame, np.sort(rows), gap)
    return scored.select(catalog.TIMESTAMP, pl.col(catalog.shipped_column(horizon)).alias("champion"))


def decision_document(decision: Decision) -> dict:
    return json.loads(decision.model_dump_json())
