"""The run report (report.md): what a person reads first. Pure: typed metrics in, markdown out.

Rendering depends only on the metrics' content, never on the order a JSON reader happened to give dict keys:
models in the run's order, candidates as meta, mean, best single, weights in the order of the models the
predictor reads, data rows target first. So ``macd-ml report RUN`` reproduces a run's report.md exactly.
"""

from __future__ import annotations

from macd_ml.models.evaluation.metrics import Decision, Metrics


def _f(x, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _candidate_order(label: str) -> tuple[int, str]:
    return ({"meta": 0, "mean": 1}.get(label, 2), label)


def _describe(label: str, models: list[str]) -> str:
    if label == "meta":
        return f"a regularised logistic meta-learner over {', '.join(models)}"
    if label == "mean":
        return f"the equal-weight mean of {', '.join(models)}"
    return f"the single model {label.removeprefix('best:')}"


def _reference_margin(m) -> str:
    """The paired inner-CV comparison with the reference model that let the pick ship, or overruled it."""
    for label, c in m.candidates.items():
        if c.vs_reference is None:
            continue
        se = "no SE" if c.vs_reference_se is None else f"± {c.vs_reference_se:.4f} (SE, paired)"
        versus = f"{c.vs_reference:+.4f} {se}"
        if label == m.shipped:
            return f" It beats the reference model on the same inner rows by {versus}, beyond the margin."
        return (
            f" The inner-CV pick was {label}, but against the reference model on the same inner rows it scores "
            f"{versus}, inside the margin (`stacking.reference_margin_se`), so the reference ships."
        )
    return ""


def _model_card(metrics: Metrics, h: list[str]) -> list[str]:
    """Per shipped predictor: what it is, what it beat on inner CV and by how much, its holdout AUC with 3·SE,
    and the reference model's holdout AUC."""
    lines = ["", "## Model card", ""]
    for x in h:
        m = metrics.meta[x]
        val = m.candidates.get(m.shipped)
        others = [
            f"{label} {_f(c.val_auc)} ({_f((val.val_auc or 0) - (c.val_auc or 0)) if val and c.val_auc else '–'})"
            for label, c in sorted(m.candidates.items(), key=lambda kv: _candidate_order(kv[0]))
            if label != m.shipped
        ]
        se = metrics.auc_se[x].test if metrics.auc_se and x in metrics.auc_se else None
        ref = (metrics.reference or {}).get(x)
        ref_text = (
            f"the reference model scores {_f(ref.test_auc)} on the same holdout"
            + (
                f" (ships minus reference {m.test_auc - ref.test_auc:+.3f})"
                if m.test_auc is not None and ref.test_auc is not None
                else ""
            )
            if ref
            else "no reference model in this run"
        )
        lines.append(
            f"- **h={x}: {m.shipped}**, {_describe(m.shipped, m.models)}. Chosen on the inner walk-forward with "
            f"AUC {_f(m.val_auc)} over: {', '.join(others) or 'no other candidate'} (its margin in brackets)."
            + _reference_margin(m)
            + f" Holdout AUC {_f(m.test_auc)}"
            + (f" ± {3 * se:.3f} (3·SE)" if se is not None else "")
            + f"; {ref_text}."
        )
    return lines


def render_report(metrics: Metrics, plots: list[str] | None = None, plots_drawn: bool = True) -> str:
    h = [str(x) for x in metrics.horizons]
    span = metrics.input.span[metrics.target]
    lines = [
        f"# {metrics.target} ensemble: {span[0][:16]} to {span[1][:16]} UTC",
        "",
        f"Target **{metrics.target}**, cross {', '.join(metrics.cross) or 'none'}, horizons {', '.join(h)} h; "
        f"{metrics.n_rows} feature rows, {metrics.n_oof} out-of-fold rows, {metrics.n_test} holdout rows.",
        "",
        "## Base models (AUC)",
        "",
        "| model | "
        + " | ".join(f"OOF h={x}" for x in h)
        + " | "
        + " | ".join(f"holdout h={x}" for x in h)
        + " | collapsed |",
        "|---" * (2 + 2 * len(h)) + "|",
    ]
    for name, per_h in metrics.models.items():
        oof = " | ".join(_f(per_h[x].oof_auc) for x in h)
        test = " | ".join(_f(per_h[x].test_auc) for x in h)
        train = metrics.training.get(name)
        collapsed = "**yes**" if train is not None and train.collapsed else "no"
        pooled = train.refit.get("pooled_with") if train is not None else None
        label = f"{name} (pooled with {', '.join(pooled)})" if pooled else name
        lines.append(f"| {label} | {oof} | {test} | {collapsed} |")
    lines += [
        "",
        "OOF AUC is scored within each fold's test span and averaged by rows (pooled across folds it would also "
        "score each fold's intercept against the next span's base rate). `reference`: a fixed simple LightGBM "
        "on returns, MACD(12,26,9), volatility, volume z-score and range, same folds and holdout, trained in "
        "every run; it joins the stack unless `stacking.include_reference` is off.",
    ]
    if metrics.auc_se:
        se = metrics.auc_se
        lines += [
            "",
            "Noise level: 3·SE of an AUC with overlapping labels, SE = sqrt(h / 3n): "
            + ", ".join(f"h={x}: OOF ±{3 * se[x].oof:.3f}, holdout ±{3 * se[x].test:.3f}" for x in h)
            + ".",
        ]
    cross = metrics.cross_features
    if cross:
        lines += [
            "",
            "## What the cross-asset features add",
            "",
            "AUC of `lgb_cross` (own + cross features) minus `lgb` (own features only):",
            "",
            "| horizon | OOF gain | holdout gain |",
            "|---|---|---|",
        ]
        for x in h:
            g = cross.auc_gain[x]
            lines.append(f"| {x} | {_f(g['oof_auc'])} | {_f(g['test_auc'])} |")
        imp = cross.importance
        if imp:
            lines += ["", f"Cross features carry {imp['cross_gain_share']:.1%} of `lgb_cross`'s total gain. Top:", ""]
            lines += [f"- `{t['feature']}` ({t['gain_share']:.1%})" for t in imp["top_cross_features"]]
    meta = metrics.meta
    if meta:
        lines += [
            "",
            "## What ships",
            "",
            "Chosen per horizon on the inner walk-forward over OOF rows only (meta-learner vs equal-weight "
            "mean vs best single model); the holdout only reports. The gap is validation minus holdout AUC.",
            "",
            "| horizon | ships | inner-CV AUC | holdout AUC | gap | 3·SE of gap | in-sample OOF AUC |",
            "|---|---|---|---|---|---|---|",
        ]
        for x in h:
            m = meta[x]
            lines.append(
                f"| {x} | {m.shipped} | {_f(m.val_auc)} | {_f(m.test_auc)} | {_f(m.gap_abs)} "
                f"| {_f(3 * m.gap_combined_se)} | {_f(m.oof_auc)} |"
            )
        lines += ["", "| horizon | candidate | inner-CV AUC | holdout AUC |", "|---|---|---|---|"]
        for x in h:
            for label in sorted(meta[x].candidates, key=_candidate_order):
                c = meta[x].candidates[label]
                lines.append(f"| {x} | {label} | {_f(c.val_auc)} | {_f(c.test_auc)} |")
        weighted = [x for x in h if meta[x].weights]
        if weighted:
            lines += ["", "Meta-learner weights (on standardised logits):", ""]
            for x in weighted:
                w: dict[str, float] = meta[x].weights or {}
                lines.append(f"- h={x}: " + ", ".join(f"{k} {w[k]:.3f}" for k in meta[x].models if k in w))
    if meta:
        lines += _model_card(metrics, h)
    if metrics.diversity:
        lines += ["", "## Diversity", ""]
        for x in h:
            d = metrics.diversity.get(x)
            if not d:
                continue
            pairs = ", ".join(f"{p['a']}/{p['b']} ({p['corr']:.2f})" for p in d.redundant_pairs) or "none"
            collapsed = ", ".join(d.collapsed) or "none"
            dropped = meta[x].dropped if x in meta else {}
            left_out = ", ".join(f"{k} ({v})" for k, v in dropped.items()) or "none"
            lines.append(
                f"- h={x}: redundant pairs (corr > threshold): {pairs}; collapsed: {collapsed}; left out: {left_out}"
            )
    if metrics.parity:
        p = metrics.parity
        lines += [
            "",
            "## ONNX export",
            "",
            f"`onnx/ensemble.onnx` (one input: the last bars of raw features) and one file per model; parity on "
            f"{p.get('rows', 0)} holdout rows ({p.get('provider', '?')}): "
            f"{'passed' if p.get('passed') else '**FAILED**'}, ensemble max |onnx - native| "
            f"{p.get('ensemble', {}).get('max_abs', float('nan')):.1e}.",
        ]
    if metrics.health:
        lines += [
            "",
            "## Health gate",
            "",
            f"**{'PASSED' if metrics.health.passed else 'REFUSED'}** "
            f"(primary horizon {metrics.health.primary_horizon} h)",
            "",
            "| check | result | detail |",
            "|---|---|---|",
        ]
        for check in metrics.health.checks:
            result = "ok" if check.passed else ("**FAIL**" if check.severity == "error" else "warning")
            lines.append(f"| {check.name} | {result} | {check.detail.replace('|', '/')} |")
    lines += _calibration_section(metrics, h)
    lines += _backtest_section(metrics.backtest)
    lines += _trade_gate_section(metrics.trade_gate)
    lines += _drift_section(metrics.drift)
    lines += _familiarity_section(metrics.familiarity)
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{p.rsplit('/', 1)[-1][:-4]}]({p})" for p in sorted(plots)]
    elif not plots_drawn:
        lines += ["", "## Plots", "", "Not drawn: this run's configuration has `report.plots = false`."]
    lines += ["", "## Data", ""]
    for sym in [metrics.target, *metrics.cross]:
        gaps = metrics.input.gaps.get(sym)
        if gaps is None:
            continue
        lines.append(
            f"- {sym}: {metrics.input.rows[sym]} bars, {gaps['n_gaps']} gaps "
            f"(longest {gaps['longest_hours']} h, {gaps['missing_hours']} h missing)"
        )
    return "\n".join(lines) + "\n"


def _calibration_section(metrics: Metrics, h: list[str]) -> list[str]:
    rows = [(x, c) for x in h if x in metrics.meta and (c := metrics.meta[x].calibration) is not None]
    if not rows:
        return []
    lines = [
        "",
        "## Calibration",
        "",
        "Chosen per horizon on the inner walk-forward of the OOF rows (lowest Brier score; `none` wins ties), "
        "refitted on every OOF row and applied inside `ensemble.onnx`. Holdout Brier scores report only.",
        "",
        "| horizon | calibration | inner Brier none / platt / isotonic | holdout Brier before | after |",
        "|---|---|---|---|---|",
    ]
    for x, c in rows:
        inner = " / ".join(_f(c.inner_brier.get(k), 4) for k in ("none", "platt", "isotonic"))
        lines.append(f"| {x} | {c.kind} | {inner} | {_f(c.holdout_brier_raw, 4)} | {_f(c.holdout_brier, 4)} |")
    lines += ["", "Reliability on the holdout (mean predicted -> observed frequency, rows), after calibration:", ""]
    for x, c in rows:
        bins = "; ".join(f"{b['predicted']:.2f} -> {b['observed']:.2f} ({b['n']})" for b in c.reliability)
        lines.append(f"- h={x}: {bins}")
    return lines


_VARIANTS = [
    ("buy_and_hold", "buy and hold"),
    ("ungated_long_flat", "MACD long/flat, every signal"),
    ("gated_long_flat", "MACD long/flat, gated"),
    ("ungated_long_short", "MACD long/short, every signal"),
    ("gated_long_short", "MACD long/short, gated"),
]


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:+.1f} %"


def _oof_span(choice: dict) -> str:
    return f" ({choice['oof_first'][:10]} to {choice['oof_last'][:10]})" if choice.get("oof_first") else ""


def _thr(bt: dict) -> str:
    return "each run's own threshold" if bt.get("threshold") is None else f"{bt['threshold']:.2f}"


def _backtest_section(bt: dict | None) -> list[str]:
    if not bt:
        return []
    choice = bt.get("threshold_choice", {})
    lines = [
        "",
        "## Does the gate help the bot? (holdout backtest)",
        "",
        f"MACD(12,26,9) crossovers of the target, {bt['first'][:16]} to {bt['last'][:16]} UTC ({bt['bars']} "
        f"bars, {bt['signals']} signals), decided at a bar's close and traded at the next open, exits on the "
        f"opposite signal or after {bt['horizon']} h, costs {bt['cost_bps']:g} bps per side. Gated: taken only when "
        f"the calibrated probability of the signal's direction at h={bt['horizon']} is >= {_thr(bt)}, a "
        f"threshold chosen on the OOF rows{_oof_span(choice)}, never on the backtest's bars. "
        "Intervals: 95 % moving-block bootstrap.",
        "",
        "| strategy | trades | hit rate | mean / trade | cumulative | Sharpe (95 % interval) | max drawdown | "
        "exposure | turnover / day |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, label in _VARIANTS:
        v = bt["variants"].get(key)
        if v is None:
            continue
        lo, hi = v["sharpe_interval"]
        hit = "–" if v["hit_rate"] is None else f"{100 * v['hit_rate']:.0f} %"
        lines.append(
            f"| {label} | {v['trades']} | {hit} | {_pct(v['mean_trade_return'])} | {_pct(v['cumulative_return'])} "
            f"| {v['sharpe']:.2f} ({lo:.2f} to {hi:.2f}) | {100 * v['max_drawdown']:.1f} % | "
            f"{100 * v['exposure']:.0f} % | {v['turnover_per_day']:.2f} |"
        )
    lines += ["", "| gated - ungated | Sharpe (95 % interval) | annual return (95 % interval) |", "|---|---|---|"]
    for mode, d in bt["gated_minus_ungated"].items():
        lo, hi = d["sharpe_interval"]
        rlo, rhi = d["annual_return_interval"]
        lines.append(
            f"| {mode.replace('_', '/')} | {d['sharpe']:+.2f} ({lo:+.2f} to {hi:+.2f}) | "
            f"{_pct(d['annual_return'])} ({_pct(rlo)} to {_pct(rhi)}) |"
        )
    if bt.get("lookahead_suspect"):
        lines += [
            "",
            f"**Look-ahead suspected**: {', '.join(bt['lookahead_suspect'])} score(s) too well for an hourly "
            "MACD gate (Sharpe > 5 or hit rate >= 80 %); check the data and labels before trusting this run.",
        ]
    return lines


GATE_KINDS = (
    ("direction", "direction gate (P of the signal's direction)"),
    ("meta", "meta gate (P the trade pays)"),
    ("meta_sized", "meta gate, sized"),
)


def gate_kinds_table(kinds: dict, with_shipped: bool = False) -> list[str]:
    """Each gate kind minus no gate (taking every signal), per position style, with 95 % intervals; where a kind
    was set against random skips at its own rate (a track record), the share of those draws it beats."""
    labels = [*GATE_KINDS, ("shipped", "what each run shipped")] if with_shipped else list(GATE_KINDS)
    lines = [
        "| gate - no gate | style | trades (no gate) | Sharpe (95 % interval) | annual return (95 % interval) | beats "
        "random skips at its rate (both styles) |",
        "|---|---|---|---|---|---|",
    ]
    for key, label in labels:
        k = kinds.get(key)
        if not k:
            continue
        for mode in ("long_flat", "long_short"):
            d = k[mode]["minus_none"]
            n0 = kinds.get("none", {}).get(mode, {}).get("trades")
            trades = "–" if k[mode].get("trades") is None else f"{k[mode]['trades']} ({n0})"
            lo, hi = d["sharpe_interval"]
            rlo, rhi = d["annual_return_interval"]
            rs = (k.get("mean") or {}).get("random_skips") if mode == "long_flat" else None
            rnd = (
                f"{100 * rs['gate_beats_share']:.0f} % of {rs['draws']} (rate {100 * rs['rate']:.0f} %)" if rs else "–"
            )
            lines.append(
                f"| {label} | {mode.replace('_', '/')} | {trades} | {d['sharpe']:+.2f} ({lo:+.2f} to {hi:+.2f}) | "
                f"{_pct(d['annual_return'])} ({_pct(rlo)} to {_pct(rhi)}) | {rnd} |"
            )
    return lines


def _trade_gate_section(gate: dict | None) -> list[str]:
    if not gate:
        return []
    inner = gate.get("inner") or {}
    sig = gate.get("signals", {})
    lines = [
        "",
        "## Trade gate: take this MACD trade?",
        "",
        f"**Ships: {gate['kind']}**: {gate['reason']}. Chosen on out-of-fold trades ({gate['oof_span'][0][:10]} to "
        f"{gate['oof_span'][1][:10]}; {sig.get('oof', 0)} target signals"
        + (f", {sig['panel']} more from the panel" if sig.get("panel") else "")
        + f"), label '{gate['label']}'. Thresholds: direction {gate['thresholds']['direction']}, meta "
        f"{_f(gate['thresholds'].get('meta'), 4)}."
        + (
            f" Secondary model: inner walk-forward AUC {_f(inner.get('auc'))} on {inner.get('n_test')} signals "
            f"(L2 C = {inner.get('C')})."
            if inner
            else f" {gate.get('note', '')}"
        ),
        "",
        "Out-of-fold trades (what chose it):",
        "",
        *gate_kinds_table(gate.get("oof", {})),
    ]
    hold = gate.get("holdout") or {}
    if hold.get("kinds"):
        lines += [
            "",
            f"Holdout (reported only; {hold['signals']} signals, secondary AUC {_f(hold.get('auc'))}):",
            "",
            *gate_kinds_table(hold["kinds"]),
        ]
    return lines


def _familiarity_section(fam: dict | None) -> list[str]:
    """What the bot will flag as unlike the training data (docs/bot-contract.md)."""
    if not fam:
        return []
    rate = fam.get("holdout_unfamiliar_rate")
    share = "–" if rate is None else f"{100 * rate:.1f} %"
    return [
        "",
        "## Bars unlike the training data",
        "",
        f"- Data ends {fam['data_end']}: the bot counts the model's age from there (serving.max_model_age_hours).",
        f"- Dissimilarity threshold {fam['threshold']:.3f}: the {fam['quantile']:g} quantile of "
        f"{fam['calibration_rows']} training rows' own scores against {fam['reference_rows']} reference rows (each "
        "without its own week).",
        f"- Holdout bars above it: {share} (about {100 * (1 - fam['quantile']):.1f} % where the holdout is like the "
        "training data; far more means the market moved away from what the model knows).",
    ]


def _drift_section(drift: dict | None) -> list[str]:
    if not drift:
        return []
    f = drift.get("features") or {}
    lines = ["", "## Drift", ""]
    if f:
        top = ", ".join(f"`{t['feature']}` {t['psi']:.2f}" for t in f.get("top", [])[:5])
        flag = " **(drift)**" if f.get("drifted") else ""
        lines.append(
            f"- Features, newest rows {f['newest_rows'][0]}-{f['newest_rows'][1]} vs the training rows "
            f"{f['train_rows'][0]}-{f['train_rows'][1]}: {len(f.get('drifted', []))} with PSI > {f['limit']:g} "
            f"({100 * f.get('drifted_share', 0):.0f} %){flag}; highest: {top}."
        )
    lines.append(
        "- The shipped probability against the champion's, on the same bars: see Promotion (it depends on which "
        "run is current)."
    )
    return lines


def render_promotion(decision: Decision) -> str:
    """The champion / challenger section, appended to the report when the run is published."""
    lines = [
        "",
        "## Promotion",
        "",
        f"**{'promoted' if decision.promote else 'not promoted'}**"
        + (" (forced by a person)" if decision.forced else "")
        + f": {decision.reason}.",
    ]
    if decision.n_rows:
        lines += [
            "",
            "| | run | AUC | window |",
            "|---|---|---|---|",
            f"| challenger | {decision.challenger or 'this run'} | {_f(decision.challenger_auc)} | "
            f"{decision.n_rows} rows, {decision.window_first:%Y-%m-%d %H:%M} "
            f"to {decision.window_last:%Y-%m-%d %H:%M} UTC |",
            f"| champion | {decision.champion} | {_f(decision.champion_auc)} | same |",
            "",
            f"Margin: {decision.margin_se:g} SE of the AUC (SE {_f(decision.se)}), horizon {decision.horizon} h.",
        ]
    shift = decision.prediction_shift
    if shift and shift.get("psi") is not None:
        flag = " **(drift: above the limit)**" if shift.get("flagged") else ""
        lines += [
            "",
            f"Shipped probability, champion -> challenger on these rows: PSI {shift['psi']:.3f} (limit "
            f"{shift['limit']:g}){flag}, mean {shift['mean_champion']:.3f} -> {shift['mean_challenger']:.3f}, "
            f"std {shift['std_champion']:.3f} -> {shift['std_challenger']:.3f}.",
        ]
    return "\n".join(lines) + "\n"


def track_record_markdown(doc: dict, children_table: str) -> str:
    """The walk-forward report (flows/walkforward.py): the children, then per target its stitched record (the
    backtest tables over the whole span, one row per segment), then the pool of the targets."""
    walk = doc.get("walk", {})
    lines = [
        "# Walk-forward track record",
        "",
        f"A retrain every {walk.get('every')} ({walk.get('profile')} profile); each model trades only the bars after "
        "its data, from raw candles through its bundle, with its own threshold (chosen on its OOF rows). A cutoff "
        "whose run was refused or failed leaves the bot on the previous model.",
        "",
        "## Children",
        "",
        children_table,
    ]
    for target, names in (doc.get("untraded") or {}).items():
        lines += ["", f"{target}: no model had shipped by {', '.join(names)}; the record starts at the first that did."]
    for target, rec in doc.get("targets", {}).items():
        lines += ["", f"# {target}: {rec['first'][:10]} to {rec['last'][:10]} ({rec['bars']} bars)"]
        lines += _backtest_section(rec)[2:]
        lines += _record_gates(rec)
        lines += ["", f"![equity {target}](equity_{target}.png)"]
        lines += [
            "",
            "| segment | first | last | bars | threshold | trade gate | AUC | trades ungated / gated | "
            "Sharpe ungated / gated | buy and hold |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for s in rec["segments"]:
            thr = "–" if s["threshold"] is None else f"{s['threshold']:.2f}"
            a = "–" if s.get("auc") is None else f"{s['auc']:.3f}"
            trades = f"{s.get('trades_ungated', '–')} / {s.get('trades_gated', '–')}"
            sh = f"{s['sharpe_ungated']:.2f} / {s['sharpe_gated']:.2f}" if "sharpe_gated" in s else "–"
            bh = _pct(s["return_buy_and_hold"]) if "return_buy_and_hold" in s else "–"
            lines.append(
                f"| {s['segment']} | {s['first'][:16]} | {s['last'][:16]} | {s['bars']} | {thr} | "
                f"{s.get('gate') or '–'} | {a} | {trades} | {sh} | {bh} |"
            )
    pooled = doc.get("pooled")
    if pooled:
        lines += [
            "",
            f"# Pooled: {', '.join(pooled['targets'])} (equal weight), {pooled['first'][:10]} to "
            f"{pooled['last'][:10]} ({pooled['bars']} hours)",
            "",
            "| strategy | cumulative | Sharpe (95 % interval) |",
            "|---|---|---|",
        ]
        for key, label in _VARIANTS:
            v = pooled["variants"].get(key)
            if v is not None:
                lo, hi = v["sharpe_interval"]
                lines.append(f"| {label} | {_pct(v['cumulative_return'])} | {v['sharpe']:.2f} ({lo:.2f} to {hi:.2f}) |")
        lines += ["", "| gated - ungated | Sharpe (95 % interval) |", "|---|---|"]
        for mode, d in pooled["gated_minus_ungated"].items():
            lo, hi = d["sharpe_interval"]
            lines.append(f"| {mode.replace('_', '/')} | {d['sharpe']:+.2f} ({lo:+.2f} to {hi:+.2f}) |")
        lines += _record_gates(pooled)
        lines += ["", "![equity, pooled](equity_pooled.png)"]
    return "\n".join(lines) + "\n"


def _record_gates(rec: dict) -> list[str]:
    """A track record's trade gate kinds against taking every signal (each segment with its own thresholds;
    ``shipped``: each segment's own choice)."""
    kinds = rec.get("gate_kinds")
    if not kinds:
        return []
    lines = ["", "Trade gate kinds minus no gate (every MACD signal taken), 95 % moving-block intervals:", ""]
    return lines + gate_kinds_table(kinds, with_shipped=True)
