"""The run report (report.md): what a person reads first. Pure: metrics in, markdown out."""

from __future__ import annotations


def _f(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def render_report(metrics: dict, plots: list[str] | None = None) -> str:
    h = [str(x) for x in metrics["horizons"]]
    lines = [
        f"# {metrics['target']} ensemble: {metrics['input']['span'][metrics['target']][0][:16]} to "
        f"{metrics['input']['span'][metrics['target']][1][:16]} UTC",
        "",
        f"Target **{metrics['target']}**, cross {', '.join(metrics['cross']) or 'none'}, horizons {', '.join(h)} h; "
        f"{metrics['n_rows']} feature rows, {metrics['n_oof']} out-of-fold rows, {metrics['n_test']} holdout rows.",
        "",
        "## Base models (AUC)",
        "",
        "| model | " + " | ".join(f"OOF h={x}" for x in h) + " | " + " | ".join(f"holdout h={x}" for x in h) + " | collapsed |",
        "|---" * (2 + 2 * len(h)) + "|",
    ]
    training = metrics.get("training", {})
    for name, per_h in metrics.get("models", {}).items():
        oof = " | ".join(_f(per_h[x]["oof_auc"]) for x in h)
        test = " | ".join(_f(per_h[x]["test_auc"]) for x in h)
        collapsed = "**yes**" if training.get(name, {}).get("collapsed") else "no"
        lines.append(f"| {name} | {oof} | {test} | {collapsed} |")
    se = metrics.get("auc_se", {})
    if se:
        lines += ["", "Noise level: 3·SE of an AUC with overlapping labels, SE = sqrt(h / 3n): "
                  + ", ".join(f"h={x}: OOF ±{3 * se[x]['oof']:.3f}, holdout ±{3 * se[x]['test']:.3f}" for x in h) + "."]
    cross = metrics.get("cross_features")
    if cross:
        lines += ["", "## What the cross-asset features add", "",
                  "AUC of `lgb_cross` (own + cross features) minus `lgb` (own features only):", "",
                  "| horizon | OOF gain | holdout gain |", "|---|---|---|"]
        for x in h:
            g = cross["auc_gain"][x]
            lines.append(f"| {x} | {_f(g['oof_auc'])} | {_f(g['test_auc'])} |")
        imp = cross.get("importance")
        if imp:
            lines += ["", f"Cross features carry {imp['cross_gain_share']:.1%} of `lgb_cross`'s total gain. Top:", ""]
            lines += [f"- `{t['feature']}` ({t['gain_share']:.1%})" for t in imp["top_cross_features"]]
    meta = metrics.get("meta") or {}
    if meta:
        lines += ["", "## What ships", "",
                  "Chosen per horizon on the inner walk-forward over OOF rows only (meta-learner vs equal-weight "
                  "mean vs best single model); the holdout only reports. The gap is validation minus holdout AUC.", "",
                  "| horizon | ships | inner-CV AUC | holdout AUC | gap | 3·SE of gap | in-sample OOF AUC |",
                  "|---|---|---|---|---|---|---|"]
        for x in h:
            m = meta[x]
            lines.append(f"| {x} | {m['shipped']} | {_f(m['val_auc'])} | {_f(m['test_auc'])} | {_f(m['gap_abs'])} "
                         f"| {_f(3 * m['gap_combined_se'])} | {_f(m['oof_auc'])} |")
        lines += ["", "| horizon | candidate | inner-CV AUC | holdout AUC |", "|---|---|---|---|"]
        for x in h:
            for label, c in meta[x]["candidates"].items():
                lines.append(f"| {x} | {label} | {_f(c['val_auc'])} | {_f(c['test_auc'])} |")
        weights = {x: meta[x]["weights"] for x in h if meta[x].get("weights")}
        if weights:
            lines += ["", "Meta-learner weights (on standardised logits):", ""]
            for x, w in weights.items():
                lines.append(f"- h={x}: " + ", ".join(f"{k} {v:.3f}" for k, v in w.items()))
    div = metrics.get("diversity") or {}
    if div:
        lines += ["", "## Diversity", ""]
        for x in h:
            d = div.get(x)
            if not d:
                continue
            pairs = ", ".join(f"{p['a']}/{p['b']} ({p['corr']:.2f})" for p in d["redundant_pairs"]) or "none"
            collapsed = ", ".join(d["collapsed"]) or "none"
            dropped = meta.get(x, {}).get("dropped") or {}
            lines.append(f"- h={x}: redundant pairs (corr > threshold): {pairs}; collapsed: {collapsed}; "
                         f"left out: {', '.join(f'{k} ({v})' for k, v in dropped.items()) or 'none'}")
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{p.rsplit('/', 1)[-1][:-4]}]({p})" for p in plots]
    lines += ["", "## Data", ""]
    for sym, g in metrics.get("input", {}).get("gaps", {}).items():
        lines.append(f"- {sym}: {metrics['input']['rows'][sym]} bars, {g['n_gaps']} gaps "
                     f"(longest {g['longest_hours']} h, {g['missing_hours']} h missing)")
    return "\n".join(lines) + "\n"
