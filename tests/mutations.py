"""Mutation check for the leak net: plant one deliberate bug at a time and make sure the tests notice.

    .venv/bin/python tests/mutations.py            # every mutation (a few minutes)
    .venv/bin/python tests/mutations.py --only holdout-choice

Each mutation copies the package (artifacts, features, models, tasks, flows, deployments, serving) to a temporary
``macd_ml`` folder, replaces one snippet (which must occur exactly once), and runs the tests that must kill it
with that copy first on PYTHONPATH. A mutation is *killed* when those tests fail; a *survivor* is a hole in the
net. The run ends with a table and exits 1 if anything survived or a snippet no longer matches.

When the code moves, update the snippets here; never weaken a test to kill a mutation.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cliutil import package_copy  # (run as a script: tests/ is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
NET = "tests/test_leakage_net.py"
BLIND = "tests/test_blindness.py"
GATE = "tests/test_trade_gate.py"
GUARDS = "tests/test_bot_guards.py"


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    why: str


MUTATIONS = [
    Mutation(
        "early-stop-on-test",
        "models/learners/train.py",
        "model.fit(data, fit, es)",
        "model.fit(data, fit, test)",
        (f"{NET}::test_test_span_labels_reach_no_fit_no_early_stop_no_head_choice",),
        "early stopping, best epoch and head chosen on the test span (the holdout, for the refit)",
    ),
    Mutation(
        "collapse-on-test",
        "models/learners/train.py",
        "collapse_check(model, data, es, collapse_std)",
        "collapse_check(model, data, test, collapse_std)",
        (f"{NET}::test_collapse_check_reads_the_early_stopping_slice",),
        "the collapse check reads the test span",
    ),
    Mutation(
        "holdout-choice",
        "models/ensemble/stacking.py",
        "        test_auc, p = evaluate_holdout(st.shipped, holdout, h)",
        "        st.shipped = candidate_predictor(st, max(test, key=lambda k: test[k] or 0), oof, spec)\n"
        "        test_auc, p = evaluate_holdout(st.shipped, holdout, h)",
        (f"{NET}::test_what_ships_does_not_depend_on_holdout_labels",),
        "what ships re-chosen by holdout AUC",
    ),
    Mutation(
        "inner-cv-in-sample",
        "models/ensemble/stacking.py",
        "fitted = fit_meta(P[train], y[train], kept, C, spec.nonneg)",
        "fitted = fit_meta(P[test], y[test], kept, C, spec.nonneg)",
        (f"{NET}::test_inner_cv_scores_are_out_of_sample", f"{NET}::test_noise_models_do_not_look_good_on_inner_cv"),
        "inner-CV candidates scored on the rows they were fitted on",
    ),
    Mutation(
        "normaliser-all-rows",
        "models/learners/sequence.py",
        "self.mean, self.std = fit_normaliser(X, fit_idx)",
        "self.mean, self.std = fit_normaliser(X, fit_idx)[0], fit_normaliser(X, np.arange(len(X)))[1]",
        (f"{NET}::test_sequence_normaliser_is_fitted_on_fitting_rows_only",),
        "the sequence normaliser's std fitted on all rows",
    ),
    Mutation(
        "parquet-unverified",
        "artifacts/store.py",
        "return pl.read_parquet(verify(ref))",
        "return pl.read_parquet(ref.path)",
        (f"{NET}::test_every_parquet_artifact_load_is_verified",),
        "parquet loads that skip the sha256 check (store)",
    ),
    Mutation(
        "parquet-bypass",
        "tasks/train.py",
        "frame = read_parquet(inputs.features.data)",
        "frame = pl.read_parquet(inputs.features.data.path)",
        (f"{NET}::test_every_parquet_artifact_load_is_verified",),
        "parquet loads that skip the sha256 check (a task reading around the store)",
    ),
    Mutation(
        "collapsed-not-passed",
        "flows/pipeline.py",
        '{m: t["collapsed"] for m, t in training.items()}',
        "{}",
        (f"{NET}::test_collapsed_flags_reach_the_stacker",),
        "collapsed-model flags not reaching the stacker",
    ),
    Mutation(
        "embargo-folds",
        "features/splits.py",
        "if embargo < h_max:",
        "if embargo < h_max - 1:",
        (f"{NET}::test_embargo_shorter_than_the_longest_horizon_is_refused",),
        "an embargo of longest horizon - 1 accepted by the folds",
    ),
    Mutation(
        "embargo-config",
        "flows/config.py",
        "if emb is not None and emb < max(self.horizons):",
        "if emb is not None and emb < max(self.horizons) - 1:",
        (f"{NET}::test_embargo_shorter_than_the_longest_horizon_is_refused",),
        "an embargo of longest horizon - 1 accepted by config validation",
    ),
    Mutation(
        "focal-ignored",
        "models/learners/sequence.py",
        'if kind == "focal":',
        "if False:",
        (f"{NET}::test_focal_loss_changes_the_loss_and_the_fit",),
        "the focal loss option does nothing",
    ),
    Mutation(
        "noise-ignored",
        "models/learners/sequence.py",
        "if p.augment_noise > 0:",
        "if False:",
        (f"{NET}::test_augmentation_changes_the_fit_and_is_off_by_default",),
        "noise augmentation does nothing",
    ),
    Mutation(
        "warp-ignored",
        "models/learners/sequence.py",
        "if p.augment_time_warp > 0:",
        "if False:",
        (f"{NET}::test_augmentation_changes_the_fit_and_is_off_by_default",),
        "time warp does nothing",
    ),
    Mutation(
        "dropout-global-rng",
        "models/learners/sequence.py",
        "                module.generator = dropout_gen",
        "                pass",
        ("tests/test_models.py::test_sequence_fits_are_reproducible_under_threads",),
        "dropout draws from torch's process-global RNG, so concurrent fits are not reproducible",
    ),
    Mutation(
        "tft-bar-gather-shifted",
        "models/learners/sequence.py",
        "                return encoder.from_bars(encoder.encode_bars(bars)[where])",
        "                return encoder.from_bars(encoder.encode_bars(bars)[where.clamp(min=1) - 1])",
        ("tests/test_models.py::test_tft_encodes_each_bar_once_and_predicts_as_its_windows_do",),
        "the TFT's shared per-bar encoding is gathered one bar off: windows no longer hold their own bars",
    ),
    Mutation(
        "backtest-trades-on-the-signal-bar",
        "models/evaluation/backtest.py",
        "        pos[t + 1] = new",
        "        pos[t] = new",
        (
            "tests/test_backtest.py::test_hand_computed_long_flat_trade",
            "tests/test_backtest.py::test_decisions_trade_at_the_next_open_so_shifting_prices_changes_results",
        ),
        "a crossover decided at a bar's close trades at that bar's own open: look-ahead",
    ),
    Mutation(
        "calibration-ships-collapsed",
        "models/ensemble/calibration.py",
        '    return c.kind != "none" and p is not None and len(p) > 1 and float(np.std(c.apply(p))) < MIN_STD',
        "    return False",
        ("tests/test_calibration.py::test_a_calibration_that_squeezes_a_weak_signal_flat_never_ships",),
        "a calibration that squeezes the shipped probability flat can ship",
    ),
    Mutation(
        "reference-margin-ignored",
        "models/ensemble/stacking.py",
        "        wins = diff > (spec.reference_margin_se * se if spec.reference_margin_se else 0.0)",
        "        wins = True",
        ("tests/test_stacking.py::test_the_pick_replaces_the_reference_only_beyond_its_margin",),
        "a noise-fitted blend replaces the reference model without beating it beyond noise",
    ),
    Mutation(
        "direct-write",
        "artifacts/store.py",
        "tmp = dest.with_name(temp_name(dest.name))",
        "tmp = dest",
        ("tests/test_store.py::test_atomic_write_never_exposes_a_partial_file",),
        "writes go straight to the destination (not atomic)",
    ),
    Mutation(
        "help-missing",
        "flows/cli/run.py",
        '"Re-run a failed run under its own id. Every task that finished comes back Cached.",',
        "",
        ("tests/test_deployment.py::test_every_subcommand_has_help",),
        "a subcommand without its own help",
    ),
    Mutation(
        "report-order",
        "models/evaluation/report.py",
        "for k in meta[x].models if k in w",
        "for k in w",
        (f"{NET}::test_report_does_not_depend_on_json_key_order",),
        "the report's weights line follows JSON key order",
    ),
    Mutation(
        "unsigned-records",
        "tasks/results.py",
        "if not signing.verify_signature(PURPOSE, rel, body, signature):",
        "if False:",
        ("tests/test_trust_cache.py::test_signed_storage_round_trip_and_tamper",),
        "cache records used without checking their signature",
    ),
    Mutation(
        "stored-inputs-unsigned",
        "artifacts/records.py",
        "        if not verify_signature(purpose, folder.name, _record_body(doc), signature):\n",
        "        if False:\n",
        ("tests/test_pipeline_direct.py::test_a_record_edited_after_it_was_signed_is_not_used",),
        "a stored feature table (or candles) used though its record was edited after it was signed",
    ),
    Mutation(
        "live-check-lenient",
        "serving/live_check.py",
        "        ok = worst <= run.spec.live_tolerance\n",
        "        ok = True\n",
        ("tests/test_export_health.py::test_the_live_check_catches_a_feature_code_change",),
        "the live check passes a run whose bot path (feature code, window) computes other probabilities",
    ),
    Mutation(
        "health-check-breaks-the-next",
        "models/release/health.py",
        '            raise FileNotFoundError(f"the run has no {rel}")\n',
        "            return self.files[rel]\n",
        ("tests/test_export_health.py::test_the_holdout_auc_gate_reads_the_holdout_not_the_validation",),
        "a check that needs a missing file fails with a KeyError instead of saying which file",
    ),
    Mutation(
        "unsigned-manifest",
        "artifacts/store.py",
        "if signed:\n        if run_id",
        "if False:\n        if run_id",
        ("tests/test_trust_runs.py::test_rewritten_manifest_is_refused",),
        "a manifest rewritten with the files it lists is trusted",
    ),
    Mutation(
        "bundle-sha-skipped",
        "serving/bundle.py",
        'if _sha(members[path]) != entry["sha256"] or len(members[path]) != entry["bytes"]:',
        "if False:",
        ("tests/test_serving.py::test_unsafe_or_tampered_bundles_are_refused",),
        "opening a bundle no longer checks members against bundle.json",
    ),
    Mutation(
        "bundle-mtime",
        "serving/bundle.py",
        "info.size, info.mtime, info.mode = len(data), 0, 0o644",
        'info.size, info.mtime, info.mode = len(data), __import__("time").time(), 0o644',
        ("tests/test_serving.py::test_bundle_is_reproducible_and_verified",),
        "a bundle carries the time it was packed: the same run gives other bytes",
    ),
    Mutation(
        "stacking-switch-ignored",
        "serving/scorer.py",
        'self.stacking = stacking if stacking is not None else os.environ.get("MACD_ML_STACKING", "1") != "0"',
        "self.stacking = True",
        ("tests/test_serving.py::test_each_fallback_path",),
        "the switch that forces the non-stacked path (the old ML_ENABLE_STACKING=0) does nothing",
    ),
    Mutation(
        "publish-unsigned",
        "serving/publish.py",
        'bundle = read_bundle(bundle_bytes, "bundle", trust=trust or Trust.resolve(allow_unsigned=False))',
        'bundle = read_bundle(bundle_bytes, "bundle", trust=Trust.resolve(allow_unsigned=True))',
        ("tests/test_trust_bot.py::test_unsigned_and_wrongly_signed_bundles_are_refused",),
        "publish ships a bundle no trusted key signed",
    ),
    Mutation(
        "bundle-signature-unchecked",
        "serving/bundle.py",
        "verify_index(members.pop(SIGNATURE, None), raw_index, trust or Trust.resolve(), source)",
        "members.pop(SIGNATURE, None)",
        ("tests/test_trust_bot.py::test_unsigned_and_wrongly_signed_bundles_are_refused",),
        "a bot loads a bundle whatever its signature says",
    ),
    Mutation(
        "bundle-signature-of-another-index",
        "serving/trust.py",
        "if env.payload_type != PAYLOAD_TYPE or env.payload != index:",
        "if env.payload_type != PAYLOAD_TYPE:",
        ("tests/test_trust_bot.py::test_unsigned_and_wrongly_signed_bundles_are_refused",),
        "a genuine signature copied from another bundle vouches for this one",
    ),
    Mutation(
        "bundle-size-unbounded",
        "serving/bundle.py",
        "if len(members) >= MAX_MEMBERS or info.size > MAX_MEMBER_BYTES or total > MAX_TOTAL_BYTES:",
        "if False:",
        ("tests/test_trust_bot.py::test_a_bundle_that_unpacks_to_too_much_is_refused_before_it_is_read",),
        "a small bundle that unpacks to gigabytes is read into the bot's memory",
    ),
    Mutation(
        "bot-forgets-what-it-saw",
        "serving/publish.py",
        "state = Path(state_dir) if state_dir is not None else default_state_dir(dest)",
        'state = Path(__import__("tempfile").mkdtemp())',
        ("tests/test_trust_bot.py::test_a_bot_refuses_a_pointer_older_than_one_it_has_seen",),
        "a bot keeps no record of the metadata it has seen: an older, validly signed pointer is a rollback it takes",
    ),
    Mutation(
        "metadata-never-expires",
        "serving/publish.py",
        "expires = now + timedelta(days=expires_days)",
        "expires = now + timedelta(days=3650)",
        ("tests/test_trust_bot.py::test_a_bot_refuses_metadata_past_its_expiry",),
        "the pointer's expiry is not the one asked for: a frozen repository is served for years",
    ),
    Mutation(
        "publish-unlocked",
        "serving/publish.py",
        "    with _publish_lock(fs, root):\n        repo = _Repo(fs, root, dest)",
        "    with contextlib.nullcontext():\n        repo = _Repo(fs, root, dest)",
        ("tests/test_trust_bot.py::test_a_publisher_that_read_the_repository_holds_the_others_until_it_has_written",),
        "publishes at once: one overwrites the other, and the pointer can name a bundle another's prune deleted",
    ),
    Mutation(
        "publish-outside-dest",
        "serving/publish.py",
        "    if not _is_local(fs):\n        return\n    base = Path(root).resolve()",
        "    return\n    base = Path(root).resolve()",
        ("tests/test_trust_bot.py::test_publish_never_writes_or_deletes_outside_dest",),
        "publish follows DEST/bundles where a symlink points and prunes a user's files there",
    ),
    Mutation(
        "publish-trusts-a-file-by-its-name",
        "serving/publish.py",
        "if not (fs.exists(target) and _sha_of(fs, target) == sha):",
        "if not fs.exists(target):",
        ("tests/test_trust_bot.py::test_a_partial_file_under_a_bundles_name_is_rewritten_not_trusted",),
        "a partial file under a bundle's final name is kept and pointed at",
    ),
    Mutation(
        "rollback-unverified",
        "serving/publish.py",
        'raise BundleError(f"{path}: does not match its sha256 in the signed metadata; nothing rolled back")',
        "pass",
        ("tests/test_trust_bot.py::test_rollback_refuses_a_damaged_previous_bundle",),
        "rollback points the bots at a bundle whose bytes changed since it was published",
    ),
    Mutation(
        "onnx-external-data-allowed",
        "serving/scorer.py",
        "if t.data_location == onnx.TensorProto.EXTERNAL or t.external_data:",
        "if False:",
        ("tests/test_serving.py::test_a_graph_that_reads_files_or_runs_custom_code_is_refused",),
        "a bundle's graph reads a file of the bot's machine (external data) and returns it as probabilities",
    ),
    Mutation(
        "scorer-output-unbounded",
        "serving/scorer.py",
        "            if not _in_unit(p):",
        "            if False:",
        ("tests/test_serving.py::test_each_fallback_path",),
        "a base model's output of 7.5 is averaged into the bot's probability",
    ),
    Mutation(
        "shadow-report-probability-unchecked",
        "serving/shadow.py",
        '            _probability(v, f"probabilities[{h}]")',
        "            pass",
        ("tests/test_serving.py::test_shadow_report_counts_schema_breaks_as_malformed_and_each_bar_once",),
        "shadow-report counts a probability of 7.5 as ML coverage",
    ),
    Mutation(
        "shadow-report-counts-repeats",
        "serving/shadow.py",
        'frame = frame.unique(subset="time", keep="last", maintain_order=True)',
        "pass",
        ("tests/test_serving.py::test_shadow_report_counts_schema_breaks_as_malformed_and_each_bar_once",),
        "one bar logged 21 times counts as 21 bars",
    ),
    Mutation(
        "stage-reads-unsigned-run",
        "flows/rerun.py",
        "    manifest = verify_run(run)\n    refs = run_artifacts(run, manifest)\n    config = read_json",
        "    manifest = verify_run(run, signed=False)\n    refs = run_artifacts(run, manifest)\n    config = read_json",
        ("tests/test_export_health.py::test_a_run_edited_with_its_manifest_is_refused_by_every_command_that_reads_it",),
        "a stage command works from a run whose files and manifest were rewritten together",
    ),
    Mutation(
        "temp-judged-by-a-local-pid",
        "artifacts/store.py",
        "if m and m.group(1) in (None, HOST):",
        "if m:",
        ("tests/test_trust_runs.py::test_a_temp_file_of_another_host_is_judged_by_its_age_not_by_a_local_pid",),
        "on a shared OUT, a run removes the temp file another host's worker is writing",
    ),
    Mutation(
        "sigterm-waits-for-the-tasks",
        "flows/retrain.py",
        "    stop.inside_flow()",
        "    pass",
        ("tests/test_faults.py::test_sigterm_ends_a_retrain_within_seconds_with_one_line_and_it_resumes",),
        "SIGTERM keeps a retrain alive for minutes while its tasks finish, and prints their tracebacks",
    ),
    Mutation(
        "key-file-any-kind",
        "artifacts/signing.py",
        "if not stat.S_ISREG(st.st_mode):",
        "if False:",
        ("tests/test_trust_bot.py::test_unusable_key_files_are_refused_at_once",),
        "a key file that is a FIFO hangs the command; one that is a device is read without end",
    ),
    Mutation(
        "nightly-trains-synthetic",
        "flows/locations.py",
        "if require_data and not data_dir:",
        "if False:",
        ("tests/test_deployment.py::test_locations_in_a_deployment_come_from_parameters_then_variables",),
        "a nightly run without a candle folder trains on the synthetic market instead of failing",
    ),
    Mutation(
        "gbdt-no-min-rounds",
        "models/learners/gbdt.py",
        "if round_ >= self.floor and loss < self.best_loss:",
        "if loss < self.best_loss:",
        ("tests/test_learnable_sizes.py",),
        "early stopping may pick a round below min_rounds (GBDTs stop at 1-3 trees on small inner slices)",
    ),
    Mutation(
        "oof-auc-pooled",
        "models/evaluation/evaluate.py",
        'within.get(str(h), o.get(str(h), {}).get("auc"))',
        'o.get(str(h), {}).get("auc")',
        ("tests/test_reference.py::test_a_constant_per_fold_scores_half_within_folds_however_its_intercepts_fall",),
        "oof_auc pooled across folds again (scores each fold's intercept)",
    ),
    Mutation(
        "lgb-double-thresholds",
        "models/learners/gbdt.py",
        "lgb.Booster(model_str=float32_thresholds(booster.model_to_string(num_iteration=best)))",
        "lgb.Booster(model_str=booster.model_to_string(num_iteration=best))",
        ("tests/test_export_health.py::test_trained_lightgbm_models_carry_float32_thresholds",),
        "LightGBM thresholds left in double: ONNX (float32) sends some rows the other way",
    ),
    Mutation(
        "report-images-relative",
        "tasks/report.py",
        "report_md = embed_images(report_md, images or {})",
        "report_md = report_md",
        ("tests/test_e2e_ui.py::test_ui_custom_run_waits_for_its_folder_completes_and_shows_its_outputs_first",),
        "the UI's report artifact links its plots by relative path (broken images)",
    ),
    Mutation(
        "panel-after-fold-end",
        "models/learners/train.py",
        "np.flatnonzero(data.timestamps[n_target:] <= last)",
        "np.flatnonzero(data.timestamps[n_target:] <= data.timestamps[n_target:].max())",
        ("tests/test_pooled.py::test_panel_rows_after_a_folds_end_change_nothing",),
        "pooled training fits on panel rows at the time of the fold's test span (the market's move leaks in)",
    ),
    Mutation(
        "reference-left-out",
        "flows/config.py",
        "return self.models.trained() if self.stacking.include_reference else list(self.models.enabled)",
        "return list(self.models.enabled)",
        (
            "tests/test_reference.py::test_the_reference_always_trains_with_fixed_parameters_and_joins_the_stack_unless_left_out",
        ),
        "the reference model never joins the stack's choice, whatever stacking.include_reference says",
    ),
    Mutation(
        "auc-stop-ignored",
        "models/learners/sequence.py",
        "score = -es_loss if es_auc is None else es_auc",
        "score = -es_loss",
        ("tests/test_models.py::test_early_stopping_on_auc_restores_the_best_auc_epoch_after_min_epochs",),
        "early_stop_metric=auc still picks the best epoch by loss",
    ),
    # ------------------------------------------------------------- one level up: the flow, the tasks, the second half
    Mutation(
        "refit-early-stops-on-holdout",
        "tasks/train.py",
        "model, data, load_folds(inputs.folds).refit, collapse_std",
        'model, data, (lambda r: r.model_copy(update={"early_stop": r.test}))(load_folds(inputs.folds).refit), '
        "collapse_std",
        (f"{BLIND}::test_nothing_fitted_or_decided_reads_the_holdout",),
        "the refit early-stops on the holdout: every holdout figure and the health gate silently optimistic",
    ),
    Mutation(
        "fold-early-stops-on-its-test-span",
        "tasks/train.py",
        "    f = load_folds(inputs.folds).folds[fold]\n",
        '    f = (lambda f: f.model_copy(update={"early_stop": f.test}))(load_folds(inputs.folds).folds[fold])\n',
        (f"{BLIND}::test_nothing_fitted_before_the_last_fold_reads_its_test_span",),
        "a fold task early-stops on its own test span: OOF predictions (and all the stacker reads) optimistic",
    ),
    Mutation(
        "backtest-threshold-on-holdout",
        "tasks/backtest.py",
        "choose_threshold(bars, signals, h, spec, (oof_rows[catalog.TIMESTAMP][0], oof_rows[catalog.TIMESTAMP][-1]))",
        "choose_threshold(bars, signals, h, spec, (holdout[catalog.TIMESTAMP][0], holdout[catalog.TIMESTAMP][-1]))",
        (
            "tests/test_backtest.py::test_the_runs_backtest_chooses_its_threshold_on_the_oof_rows_alone",
            f"{BLIND}::test_nothing_fitted_or_decided_reads_the_holdout",
        ),
        "the gate's backtest threshold chosen on the holdout: the report's 'does the gate help' optimistic",
    ),
    Mutation(
        "health-reads-validation-auc",
        "models/release/health.py",
        "    test = shipped.test_auc\n",
        "    test = shipped.val_auc\n",
        ("tests/test_export_health.py::test_the_holdout_auc_gate_reads_the_holdout_not_the_validation",),
        "the holdout-AUC gate reads the validation AUC: a model with no holdout skill promoted",
    ),
    Mutation(
        "health-collapse-check-off",
        "models/release/health.py",
        "if np.std(col) < collapse_std or np.unique(np.round(col, 9)).size < 2:",
        "if False:",
        ("tests/test_export_health.py::test_a_shipped_probability_squeezed_flat_is_refused_though_every_model_varies",),
        "a shipped probability squeezed to one value passes the health gate",
    ),
    Mutation(
        "promotion-window-uncut",
        "models/release/promotion.py",
        "        window = window.filter(pl.col(catalog.TIMESTAMP) >= champ.holdout.first)\n",
        "        pass\n",
        ("tests/test_export_health.py::test_champion_challenger_never_scores_the_champion_on_bars_it_was_fitted_on",),
        "champion/challenger scores the champion on bars it was fitted on: the champion favoured",
    ),
    Mutation(
        "promotion-margin-ignored",
        "models/release/promotion.py",
        "promote = a_new >= a_old - spec.margin_se * se",
        "promote = True",
        ("tests/test_export_health.py::test_a_worse_challenger_is_not_promoted_and_force_is_logged",),
        "a challenger worse than the champion by more than the margin is promoted",
    ),
    Mutation(
        "promotion-lock-removed",
        "artifacts/store.py",
        "        fcntl.flock(fd, fcntl.LOCK_EX)\n",
        "        pass\n",
        ("tests/test_faults.py::test_two_challengers_of_one_champion_never_both_win",),
        "two runs compared with one champion both promoted, the later never compared with the earlier",
    ),
    Mutation(
        "promotion-champion-unchecked",
        "artifacts/store.py",
        "            if now not in (champion, run_id):",
        "            if False:",
        ("tests/test_faults.py::test_a_retrain_whose_champion_moved_is_refused_and_the_same_retrain_compares_again",),
        "a run promoted over a champion it was never compared with (another run was promoted meanwhile)",
    ),
    Mutation(
        "parity-net-tolerance-x1e6",
        "models/release/export.py",
        "NET_TOL = 1e-4\n",
        "NET_TOL = 1e-4 * 1e6\n",
        (
            "tests/test_export_health.py::test_a_sequence_net_whose_graph_is_off_by_more_than_its_tolerance_fails_parity",
        ),
        "a broken LSTM/TFT graph passes parity and ships",
    ),
    Mutation(
        "fold-collapse-ignored",
        "tasks/metrics.py",
        'any(r.summary["collapsed"].values()) or any(',
        'any(r.summary["collapsed"].values()) or 0 * any(',
        (f"{NET}::test_a_model_collapsed_in_any_fold_is_collapsed",),
        "a model that collapsed in a fold (not in its refit) stays in the stack",
    ),
    Mutation(
        "restack-drops-collapse-flags",
        "flows/rerun.py",
        "collapsed = {name: t.collapsed for name, t in m.training.items()}",
        "collapsed: dict = {}",
        (f"{NET}::test_collapsed_flags_reach_the_stacker",),
        "the stacking stage re-run alone puts a collapsed model back in the stack",
    ),
    Mutation(
        "drift-against-itself",
        "models/evaluation/drift.py",
        "psi(X[train, j], X[newest, j])",
        "psi(X[newest, j], X[newest, j])",
        ("tests/test_drift.py",),
        "feature drift measured of the newest window against itself: the drift check can never fire",
    ),
    Mutation(
        "bootstrap-hourly-blocks",
        "models/evaluation/backtest.py",
        "block_indices(b - a, spec.block_hours or max(horizon, 24), spec.bootstrap, spec.seed)",
        "block_indices(b - a, 1, spec.bootstrap, spec.seed)",
        ("tests/test_backtest.py::test_bootstrap_interval_is_as_wide_as_an_autocorrelated_series_really_varies",),
        "the backtest's bootstrap with blocks of one hour: intervals too narrow for overlapping trades",
    ),
    Mutation(
        "publish-writes-in-place",
        "serving/publish.py",
        'tmp = f"{root}/{BUNDLES}/.{uuid.uuid4().hex}.partial"',
        "tmp = target",
        ("tests/test_serving.py::test_a_publish_killed_mid_write_leaves_the_pointer_on_a_complete_bundle",),
        "publish writes the bundle straight to its final name: a bot reads a partial bundle",
    ),
    Mutation(
        "shadow-stuck-lstm-unseen",
        "serving/shadow.py",
        "            if k - start >= window:\n",
        "            if False:\n",
        ("tests/test_serving.py::test_shadow_report_counts_malformed_lines_and_stuck_lstm",),
        "shadow-report never sees an LSTM stuck at one value",
    ),
    Mutation(
        "cutoff-features-whole",
        "tasks/features.py",
        "    if market.until is not None:  # the whole table",
        "    if False:  # the whole table",
        ("tests/test_walkforward.py::test_walkforward_on_two_workers_then_extended_trains_only_the_new_cutoff",),
        "a walk-forward child trains on feature rows after its cutoff",
    ),
    Mutation(
        "cutoff-labels-whole",
        "tasks/features.py",
        "    candles = reload_market(market).target.frame",
        "    candles = reload_market(market, whole=True).target.frame",
        ("tests/test_walkforward.py::test_walkforward_on_two_workers_then_extended_trains_only_the_new_cutoff",),
        "a child's labels near its cutoff read the bars after it",
    ),
    Mutation(
        "cutoff-ignored-on-reload",
        "tasks/refs.py",
        "    return market if whole else market.until(ref.until)",
        "    return market",
        ("tests/test_walkforward.py::test_a_cutoff_run_is_blind_to_every_bar_after_its_cutoff",),
        "every stage of a cut run reads the candles after its cutoff",
    ),
    Mutation(
        "cut-fingerprint-by-file",
        "features/ingest.py",
        'return Candles(c.symbol, c.path, f"cut:{content_digest(frame)}", frame)',
        'return Candles(c.symbol, c.path, f"{c.sha256}@{last.isoformat()}", frame)',
        ("tests/test_walkforward.py::test_a_cutoff_slices_the_whole_table_and_names_its_content",),
        "a cutoff is named by its file: appending candles retrains every earlier cutoff",
    ),
    Mutation(
        "segment-trades-its-training-bars",
        "serving/track_record.py",
        "        after = ts.filter(ts > seg.after)\n",
        "        after = ts.filter(ts > seg.after - (ts[1] - ts[0]) * 48)\n",
        ("tests/test_walkforward.py::test_walkforward_on_two_workers_then_extended_trains_only_the_new_cutoff",),
        "a walk-forward segment trades bars its model trained on",
    ),
    Mutation(
        "refused-cutoff-still-trades",
        "flows/walkforward.py",
        'if isinstance(row, ChildResult) and row.status == "promoted" and row.run is not None:',
        "if isinstance(row, ChildResult) and row.run is not None:",
        ("tests/test_walkforward.py::test_walkforward_on_two_workers_then_extended_trains_only_the_new_cutoff",),
        "a cutoff the health gate refused trades in the track record",
    ),
    Mutation(
        "child-failure-stops-the-rest",
        "flows/children.py",
        "        exc = state.result(raise_on_failure=False)",
        "        exc = state.result()",
        (
            "tests/test_walkforward.py::test_a_fleet_target_with_bad_data_never_stops_the_others_and_a_rerun_runs_only_it",
        ),
        "one child's bad data ends the fleet without its table",
    ),
    Mutation(
        "trade-label-enters-at-the-signal-bar",
        "features/trades.py",
        "        e = int(t) + 1\n",
        "        e = int(t)\n",
        (f"{GATE}::test_trade_labels_by_hand", f"{GATE}::test_labels_match_the_backtest_trades"),
        "a trade label enters at the signal bar's open, a price the decision at its close never had",
    ),
    Mutation(
        "gate-purged-by-signal-time",
        "models/gate/secondary.py",
        "return (pl.col(EXIT) + pl.duration(hours=gap_hours) < start)",
        "return (pl.col(catalog.TIMESTAMP) + pl.duration(hours=gap_hours) < start)",
        (
            f"{GATE}::test_purging_uses_the_trade_s_span_not_a_fixed_horizon",
            f"{GATE}::test_inner_blocks_train_only_on_trades_that_ended_before_them",
        ),
        "the gate's training rows purged by the signal's time, not the trade's exit: trades still open reach in",
    ),
    Mutation(
        "gate-learns-in-sample-primary",
        "models/gate/train.py",
        "        *(pl.col(catalog.out_of_sample_column(h)).alias(catalog.shipped_column(h)) for h in horizons),",
        "        *(pl.col(catalog.shipped_column(h)) for h in horizons),",
        (f"{GATE}::test_the_gate_learns_from_out_of_sample_primary_probabilities_only",),
        "the secondary model learns from the stacker's in-sample probabilities",
    ),
    Mutation(
        "oos-column-in-sample",
        "models/ensemble/stacking.py",
        '    if shipped.kind == "meta":\n        honest = np.full(len(y), np.nan)',
        '    if shipped.kind == "never":\n        honest = np.full(len(y), np.nan)',
        ("tests/test_stacking.py::test_the_out_of_sample_column_is_never_an_in_sample_prediction",),
        "the out-of-sample column carries a meta-learner's in-sample probabilities",
    ),
    Mutation(
        "gate-final-fit-reads-the-holdout",
        "models/gate/train.py",
        "        train = pool.filter(purged_before(pool, hold_first, embargo_hours))",
        "        train = rows.filter(pl.col(LABEL).is_not_null())",
        (f"{BLIND}::test_nothing_fitted_or_decided_reads_the_holdout",),
        "the shipped secondary model is fitted on the holdout's trades too",
    ),
    Mutation(
        "gate-chosen-on-the-holdout",
        "models/gate/train.py",
        "    a, b = _span(ts, first, oof_last)",
        "    a, b = _span(ts, first, ts[-1])",
        (f"{BLIND}::test_nothing_fitted_or_decided_reads_the_holdout",),
        "the gate's thresholds and kind are chosen on a span that runs into the holdout",
    ),
    Mutation(
        "gate-chosen-without-correction",
        "models/gate/choice.py",
        "    alpha = 0.05 / max(tried, 1)",
        "    alpha = 0.05",
        (f"{GATE}::test_on_the_null_market_no_gate_kind_beats_no_gate_over_a_walk_forward",),
        "the best of many candidates ships when it beats no gate at the plain 95 % level: gates ship on noise",
    ),
    Mutation(
        "gate-parity-unchecked",
        "models/release/health.py",
        '    ok = worst <= tol and bool(parity.get("passed"))',
        '    ok = bool(parity.get("passed"))',
        (f"{GATE}::test_a_learnable_trade_outcome_is_found_by_the_meta_gate_and_not_by_the_direction_gate",),
        "the health gate no longer re-scores gate.onnx against the native probabilities",
    ),
    Mutation(
        "open-candle-scored",
        "serving/guards.py",
        "    closes = pl.col(catalog.TIMESTAMP) + pl.duration(hours=1)",
        "    closes = pl.col(catalog.TIMESTAMP)",
        (f"{GUARDS}::test_the_open_candle_is_never_scored_and_the_scorer_says_so",),
        "the Scorer scores the candle still forming (its open time, not its close, compared with now)",
    ),
    Mutation(
        "shadow-scores-open-bars",
        "serving/shadow.py",
        "    return [t for t in times if t + BAR <= now], [t for t in times if t + BAR > now]",
        "    return [t for t in times if t <= now], [t for t in times if t > now]",
        (f"{GUARDS}::test_follow_scores_a_bar_only_once_it_has_closed",),
        "the shadow logs a bar before it has closed",
    ),
    Mutation(
        "expired-model-answers",
        "serving/guards.py",
        "        if limit > 0 and bar.model_age_hours is not None and bar.model_age_hours > limit:",
        "        if limit > 0 and bar.model_age_hours is not None and bar.model_age_hours > limit * 24:",
        (f"{GUARDS}::test_an_expired_model_falls_back_with_its_reason_or_only_flags",),
        "the age limit read in days: a model three times too old still answers",
    ),
    Mutation(
        "familiarity-reads-the-holdout",
        "tasks/familiarity.py",
        "    fam = fit_familiarity(X[fit.start : fit.stop], times[fit.start : fit.stop], names, spec)",
        "    fam = fit_familiarity(X, times, names, spec)",
        (f"{BLIND}::test_nothing_fitted_or_decided_reads_the_holdout",),
        "the reference rows and threshold the bundle carries are drawn from every row, the holdout's too",
    ),
    Mutation(
        "familiarity-threshold-beside-itself",
        "models/release/familiarity.py",
        "    cal = draft.score(X, times_us)",
        "    cal = draft.score(X)",
        (f"{GUARDS}::test_the_threshold_ignores_neighbours_in_time_which_no_live_bar_has",),
        "the threshold is measured against each training row's neighbours in time: live bars flagged en masse",
    ),
    Mutation(
        "pointer-without-contract-version",
        "serving/publish.py",
        '    pointer["contract_version"] = CONTRACT_VERSION\n',
        "",
        ("tests/test_contract_schemas.py::test_the_publish_pointer_validates_through_publish_rollback_and_refresh",),
        "the publish pointer no longer says which contract it follows",
    ),
    Mutation(
        "promote-before-bundle",
        "flows/pipeline.py",
        "        bundle = s.run(bundle_task, run, home)\n        s.run(promote_task, home, run, decision.champion)",
        "        s.run(promote_task, home, run, decision.champion)\n        bundle = s.run(bundle_task, run, home)",
        ("tests/test_faults.py::test_a_bundle_that_cannot_be_written_leaves_current_on_the_previous_run",),
        "current moves before the bundle is written: a failed bundle write leaves it on a run the bot cannot fetch",
    ),
    Mutation(
        "resume-calls-an-unbundled-run-complete",
        "flows/cli/run.py",
        '    if decision.get("promote") and not default_bundle_path(folder).is_file():',
        '    if decision.get("promote") and not default_bundle_path(folder).parent.is_dir():',
        ("tests/test_faults.py::test_a_bundle_that_cannot_be_written_leaves_current_on_the_previous_run",),
        "resume answers 'already complete' for a run that failed at its bundle, though the failure told the user to "
        "resume it",
    ),
    Mutation(
        "form-accepts-a-zero-horizon",
        "flows/config.py",
        '"items": {"type": "integer", "minimum": 1}},',
        '"items": {"type": "integer"}},',
        ("tests/test_form.py::test_the_schema_carries_the_validators_rules",),
        "the run form lets a horizon of 0 through Submit: the run fails minutes later instead",
    ),
]


CONTROL = Mutation(
    "(no mutation)", "models/learners/train.py", "", "", (), "control: the tests pass on the unchanged copy"
)


def run_one(m: Mutation, keep: bool = False, chosen: list[Mutation] | None = None) -> tuple[str, float, str]:
    """Plant ``m`` in a copy of the package and run its tests. The control (no mutation) runs the tests of
    ``chosen`` (default every mutation)."""
    work = Path(tempfile.mkdtemp(prefix=f"mutant-{m.name}-"))
    try:
        pkg = package_copy(work)
        if m is not CONTROL:
            target = pkg / m.file
            text = target.read_text()
            if text.count(m.old) != 1:
                return "STALE", 0.0, f"snippet found {text.count(m.old)} times in {m.file}"
            target.write_text(text.replace(m.old, m.new))
        tests = m.tests or tuple(dict.fromkeys(t for mut in chosen or MUTATIONS for t in mut.tests))
        # PYTHONSAFEPATH: no `python -m` here or in the tests' subprocesses puts the checkout (whose macd_ml/ is the
        # unmutated package) ahead of the copy on PYTHONPATH
        env = {
            **os.environ,
            "PYTHONPATH": str(work),
            "PYTHONSAFEPATH": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        seconds = time.perf_counter() - t0
        last = (proc.stdout.strip().splitlines() or [""])[-1]
        if m is CONTROL:
            return ("passed" if proc.returncode == 0 else "FAILED"), seconds, last
        return ("killed" if proc.returncode != 0 else "SURVIVED"), seconds, last
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", help="run only these mutations (by name)")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
    if args.list:
        for m in chosen:
            print(f"{m.name:30s} {m.file:22s} {m.why}")
        return 0
    bad = 0
    print(f"{'mutation':30s} {'result':9s} {'s':>6s}  tests' last line")
    # first the control: every test the chosen mutations rely on passes on the unchanged code, so a failure below
    # is the mutation's doing
    result, seconds, last = run_one(CONTROL, chosen=chosen)
    print(f"{CONTROL.name:30s} {result:9s} {seconds:6.1f}  {last}", flush=True)
    if result != "passed":
        print("the tests fail without any mutation; fix that first")
        return 1
    for m in chosen:
        result, seconds, last = run_one(m)
        bad += result != "killed"
        print(f"{m.name:30s} {result:9s} {seconds:6.1f}  {last}", flush=True)
    print(f"{len(chosen) - bad} of {len(chosen)} mutations killed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
