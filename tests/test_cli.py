"""The command line as a whole (flows/cli/): grouped help, one meaning per flag (renamed flags keep their old
spelling, hidden, with a warning), ``--version``, ``config show|schema|example``, and the reference files that
must not drift from the code: config.example.toml, docs/cli.md, docs/environment.md."""

from __future__ import annotations

import argparse
import json
import re
import tomllib
from contextlib import redirect_stderr
from importlib.metadata import version
from io import StringIO
from pathlib import Path

import pytest

from macd_ml.flows.cli import build_parser, subcommands
from macd_ml.flows.cli.common import GROUPS
from macd_ml.flows.cli.reference import REGENERATE, cli_markdown, example_toml
from macd_ml.flows.config import RetrainConfig, load_config
from tests.cliutil import cli

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config.example.toml"


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --------------------------------------------------------------------------------------------- help, version


def _help_sections(text: str) -> dict[str, list[str]]:
    """``macd-ml --help``: section heading -> the command names listed under it."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            current = line[:-1].split(" (")[0]
            sections[current] = []
        elif current is not None and re.match(r"^  [a-z]", line):
            sections[current].append(line.split()[0])
    return sections


def test_help_lists_every_command_once_under_its_group():
    code, out, _ = cli("--help")
    assert code == 0
    sections = _help_sections(out)
    groups = [g for g, _ in GROUPS]
    assert [s for s in sections if s in groups] == groups, list(sections)  # every group, in order
    listed = [name for g in groups for name in sections[g]]
    assert sorted(listed) == sorted(subcommands(build_parser()).choices), "every command once, under a group"
    where = {name: g for g in groups for name in sections[g]}
    expected = {
        "retrain": "train",
        "resume": "train",
        "stack": "train",
        "report": "train",
        "export-onnx": "train",
        "health": "train",
        "bundle": "ship",
        "publish": "ship",
        "rollback": "ship",
        "keys": "ship",
        "fetch": "bot",
        "predict": "bot",
        "shadow": "bot",
        "shadow-report": "bot",
        "serve": "ops",
        "config": "ops",
        "synth": "data",
        "features": "data",
    }
    assert {k: where.get(k) for k in expected} == expected


@pytest.mark.parametrize("name", sorted(subcommands(build_parser()).choices))
def test_every_command_is_still_called_by_its_own_name(name):
    """Groups are presentation: ``macd-ml NAME`` (never ``macd-ml GROUP NAME``) runs each command."""
    code, out, err = cli(name, "--help")
    assert code == 0 and out.startswith(f"usage: macd-ml {name} "), err


def test_version_is_the_installed_distributions():
    code, out, _ = cli("--version")
    assert (code, out) == (0, f"macd-ml {version('macd-ml')}\n")


def test_version_from_the_console_script():
    result = cli("--version", subprocess=True, timeout=120)
    assert (result.code, result.out) == (0, f"macd-ml {version('macd-ml')}\n"), result.err


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        ([], "macd-ml"),
        (["no-such-command"], "macd-ml"),
        (["synth", "--bogus"], "macd-ml synth"),
        (["synth", "--to", "d", "extra"], "macd-ml synth"),
        (["config"], "macd-ml config"),
        (["config", "show", "--no-such-flag"], "macd-ml config show"),
    ],
)
def test_a_usage_error_is_one_line_and_exit_2_naming_the_command(argv, command):
    code, out, err = cli(*argv)
    line = _one_line(err)
    assert code == 2 and out == "" and line.startswith(f"{command}: error: "), err
    assert line.endswith(f"(`{command} --help` lists the options)"), line


# --------------------------------------------------------------------------------------------- renamed flags

# (command line before the flag, new spelling, old spelling, namespace dest, a value): every flag renamed so that
# each flag means one thing. test_the_renames_here_are_every_hidden_alias keeps this list complete.
RENAMES = [
    (["features", "--data", "D"], "--to", "--out", "to", "t.parquet"),
    (["synth"], "--to", "--out", "to", "candles"),
    (["bundle", "RUN"], "--to", "--out", "to", "b.tar.gz"),
    (["fetch", "--from", "DEST"], "--to", "--out", "to", "b.tar.gz"),
    (["stack", "RUN"], "--into", "--out", "into", "again"),
    (["report", "RUN"], "--into", "--out", "into", "again"),
    (["export-onnx", "RUN"], "--into", "--out", "into", "again"),
    (["backtest", "RUN", "--data", "D"], "--since", "--from", "first", "2024-06-01"),
    (["backtest", "RUN", "--data", "D"], "--until", "--to", "last", "2024-07-01"),
    (["backtest", "RUN", "--data", "D"], "--result", "--json", "result", "r.json"),
    (["walkforward"], "--since", "--from", "first", "2023-01-01"),
]
IDS = [f"{r[0][0]} {r[2]}" for r in RENAMES]


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.Namespace, str]:
    err = StringIO()
    with redirect_stderr(err):
        args = parser.parse_args(argv)
    return args, err.getvalue()


def _hidden_aliases(parser, path=()) -> set[tuple[str, str]]:
    found = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found |= _hidden_aliases(sub, (*path, name))
        elif action.help == argparse.SUPPRESS:
            found |= {(" ".join(path), opt) for opt in action.option_strings}
    return found


def test_the_renames_here_are_every_hidden_alias():
    assert _hidden_aliases(build_parser()) == {(r[0][0], r[2]) for r in RENAMES}


@pytest.mark.parametrize(("before", "new", "old", "dest", "value"), RENAMES, ids=IDS)
def test_a_renamed_flag_and_its_old_spelling_mean_the_same(before, new, old, dest, value):
    parser = build_parser()
    args, err = _parse(parser, [*before, new, value])
    assert getattr(args, dest) == value and err == "", err
    args, err = _parse(parser, [*before, old, value])
    assert getattr(args, dest) == value
    line = _one_line(err)
    assert f"macd-ml {before[0]}: warning: {old} is deprecated" in line and f"use {new} " in line, line


@pytest.mark.parametrize(("before", "new", "old", "dest", "value"), RENAMES, ids=IDS)
def test_the_old_spelling_is_not_in_the_help(before, new, old, dest, value):
    code, out, _ = cli(before[0], "--help")
    flags = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", out))
    assert code == 0 and new in flags and old not in flags, out


@pytest.mark.parametrize("command", ["features", "synth", "bundle", "fetch", "stack", "report", "export-onnx"])
def test_a_required_renamed_flag_is_still_required_after_a_parse_with_the_old_spelling(command):
    before, new, old, _, value = next(r for r in RENAMES if r[0][0] == command)
    parser = build_parser()
    _parse(parser, [*before, old, value])  # the old spelling waives the requirement for that parse only
    err = StringIO()
    with redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        parser.parse_args(before)
    assert exit_.value.code == 2 and f"required: {new}" in _one_line(err.getvalue()), err.getvalue()


def test_synth_writes_the_same_market_with_either_spelling(tmp_path):
    args = ["synth", "--hours", "300", "--symbols", "ETHUSDT,BTCUSDT", "--seed", "3"]
    new = cli(*args, "--to", tmp_path / "new")
    old = cli(*args, "--out", tmp_path / "old")
    assert new.code == old.code == 0 and new.err == "", (new.err, old.err)
    assert "--out is deprecated here, use --to DIR" in _one_line(old.err)
    names = sorted(p.name for p in (tmp_path / "new").iterdir())
    assert names == ["BTCUSDT_1h.csv", "ETHUSDT_1h.csv"] == sorted(p.name for p in (tmp_path / "old").iterdir())
    assert all((tmp_path / "new" / n).read_bytes() == (tmp_path / "old" / n).read_bytes() for n in names)


def test_features_writes_the_same_table_with_either_spelling(tmp_path):
    assert cli("synth", "--hours", "600", "--symbols", "ETHUSDT,BTCUSDT", "--to", tmp_path / "d").code == 0
    new = cli("features", "--data", tmp_path / "d", "--to", tmp_path / "new.parquet")
    old = cli("features", "--data", tmp_path / "d", "--out", tmp_path / "old.parquet")
    assert new.code == old.code == 0 and new.err == "", (new.err, old.err)
    assert "--out is deprecated here, use --to FILE" in _one_line(old.err)
    assert (tmp_path / "new.parquet").read_bytes() == (tmp_path / "old.parquet").read_bytes()
    assert json.loads((tmp_path / "new.json").read_text()) == json.loads((tmp_path / "old.json").read_text())


def test_a_stage_re_run_is_refused_inside_the_run_under_its_new_name(tmp_path):
    run = tmp_path / "runs" / "20250101T000000Z-00000001"
    run.mkdir(parents=True)
    code, _, err = cli("report", run, "--into", run / "again")
    assert code == 2 and f"--into {run / 'again'}: a published run is immutable" in _one_line(err), err


def test_out_means_only_the_output_folder():
    """Where a command has ``--out`` (not hidden), it is the pipeline's output folder OUT."""
    parser = build_parser()
    for name, sub in subcommands(parser).choices.items():
        for action in sub._actions:
            if "--out" in action.option_strings and action.help != argparse.SUPPRESS:
                assert action.metavar == "DIR" and "output folder OUT" in action.help, (name, action.help)


# --------------------------------------------------------------------------------------------- config show, schema


def _show(*args) -> dict:
    code, out, err = cli("config", "show", *args)
    assert code == 0, err
    return json.loads(out)


def test_config_show_without_arguments_is_the_defaults():
    assert _show() == RetrainConfig().model_dump(mode="json")


def test_config_show_is_what_a_retrain_with_the_same_arguments_runs(tmp_path, monkeypatch):
    """File < flags < --set, exactly as retrain builds it: the config retrain hands to the flow is captured."""
    import macd_ml.flows.cli.run as run_cmd

    cfg = tmp_path / "c.toml"
    cfg.write_text('target = "SOLUSDT"\nout_dir = "from-file"\n[folds]\nn_folds = 4\n[promotion]\nmargin_se = 2.0\n')
    args = ["--config", cfg, "--target", "btcusdt", "--cross", "ethusdt", "--out", tmp_path / "o"]
    args += ["--set", "folds.n_folds=3", "--set", "horizons=[5,12]", "--force", "--force-promote"]
    seen = []
    monkeypatch.setattr(run_cmd, "run", lambda config, run_id: seen.append(config) or 0)
    assert cli("retrain", *args, strict=True).code == 0
    shown = _show(*args)
    assert shown == seen[0].model_dump(mode="json")
    assert (shown["target"], shown["cross"], shown["out_dir"]) == ("BTCUSDT", ["ETHUSDT"], str(tmp_path / "o"))
    assert (shown["folds"]["n_folds"], shown["horizons"], shown["promotion"]["margin_se"]) == (3, [5, 12], 2.0)
    assert shown["force"] is True and shown["promotion"]["force"] is True


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--set", "horizons=[5,5]"], "horizons"),
        (["--set", "folds.n_fold=3"], "folds.n_fold"),
        (["--config", "/nonexistent/c.toml"], "/nonexistent/c.toml"),
        (["--target", " "], "target"),
    ],
)
def test_config_show_of_bad_input_is_one_line_and_exit_2(args, named):
    code, out, err = cli("config", "show", *args)
    assert code == 2 and out == "" and named in _one_line(err), err


def test_config_schema_is_the_models_json_schema():
    code, out, err = cli("config", "schema")
    assert code == 0, err
    assert json.loads(out) == RetrainConfig.model_json_schema()
    code, _, err = cli("config", "schema", "--set", "x=1")
    assert code == 2 and "unrecognized arguments" in _one_line(err), err


# --------------------------------------------------------------------------------------------- config.example.toml


def test_the_example_config_loads_as_the_defaults():
    assert load_config(EXAMPLE) == RetrainConfig()
    code, _, err = cli("config", "show", "--config", EXAMPLE)
    assert code == 0, err


def test_the_example_config_sets_every_key_with_a_comment():
    """Every key at its default (an unset one commented out), each first occurrence under a comment."""
    text = EXAMPLE.read_text()
    assert tomllib.loads(text) == RetrainConfig().model_dump(mode="json", exclude_none=True)
    lines, table, commented = text.splitlines(), "", set()
    for i, line in enumerate(lines):
        if line.startswith("["):
            table = line.strip("[]")
            continue
        key = re.match(r"^([a-z_0-9]+) = |^# ([a-z_0-9]+) = \(unset\)$", line)
        if key:
            name = key.group(1) or key.group(2)
            if lines[i - 1].startswith("# "):
                commented.add((table, name))
            # an entry of an array of tables after the first has the same keys: commented once is enough
            assert (table, name) in commented, f"no comment above line {i + 1}: {line}"
    unset = ["folds.embargo_hours", "health.primary_horizon", "models.lstm.max_train_rows", "models.tft.max_train_rows"]
    for key in unset:
        assert f"# {key.rsplit('.', 1)[1]} = (unset)" in text, key


def test_the_example_config_is_what_config_example_prints():
    code, out, err = cli("config", "example")
    assert code == 0, err
    assert EXAMPLE.read_text() == out == example_toml(), (
        f"config.example.toml is stale; regenerate it with `{REGENERATE}` (or `macd-ml config example > "
        "config.example.toml`)"
    )


def test_config_show_of_the_example_round_trips(tmp_path):
    shown = _show("--config", EXAMPLE)
    assert shown == RetrainConfig().model_dump(mode="json")
    again = tmp_path / "shown.json"
    again.write_text(json.dumps(shown))
    assert _show("--config", again) == shown
    assert load_config(again) == load_config(EXAMPLE)


# --------------------------------------------------------------------------------------------- docs


def test_docs_cli_md_is_the_parsers_help():
    committed = (ROOT / "docs" / "cli.md").read_text()
    assert committed == cli_markdown(), f"docs/cli.md differs from the parser; regenerate it: {REGENERATE}"


def test_docs_cli_md_has_every_command_under_its_group():
    text = (ROOT / "docs" / "cli.md").read_text()
    groups = re.findall(r"^## (\w+)$", text, flags=re.M)
    assert groups == [g for g, _ in GROUPS]
    for name, sub in subcommands(build_parser()).choices.items():
        section = text.split(f"## {sub.group}\n", 1)[1].split("\n## ", 1)[0]  # type: ignore[attr-defined]
        assert f"### `macd-ml {name}`" in section, name


def _env_names(text: str) -> set[str]:
    return set(re.findall(r"\bMACD_ML_[A-Z0-9_]+", text))


def test_every_environment_variable_is_in_docs_environment_md():
    """The package's sources (macd_ml/ and every folder it links), the image, the deployments, the tests: each
    MACD_ML_* name they hold has a row in docs/environment.md, and each row names one of them."""
    sources = [*(ROOT / "macd_ml").glob("*.py"), *(ROOT / "macd_ml").glob("*/**/*.py")]
    sources += [ROOT / "Dockerfile", ROOT / "prefect.yaml", ROOT / "Makefile", *(ROOT / "tests").glob("*.py")]
    in_code = set().union(*(_env_names(p.read_text()) for p in sources if p.is_file()))
    package = set().union(*(_env_names(p.read_text()) for p in (ROOT / "macd_ml").glob("*/**/*.py")))
    assert {"MACD_ML_KEY_FILE", "MACD_ML_HOME", "MACD_ML_DEBUG"} <= package, "the grep found the package's sources"
    doc = (ROOT / "docs" / "environment.md").read_text()
    rows = set(re.findall(r"^\| `(MACD_ML_[A-Z0-9_]+)` \|", doc, flags=re.M))
    assert in_code - rows == set(), f"add these to docs/environment.md: {sorted(in_code - rows)}"
    assert rows - in_code == set(), f"docs/environment.md names variables nothing reads: {sorted(rows - in_code)}"


# --------------------------------------------------------------------------------------------- the tests' runner


def test_in_process_and_console_script_runs_agree(tmp_path):
    args = ("config", "show", "--target", "solusdt", "--set", "folds.n_folds=3")
    inside, outside = cli(*args), cli(*args, subprocess=True, cwd=tmp_path, timeout=120)
    assert inside == outside and inside.code == 0 and json.loads(inside.out)["target"] == "SOLUSDT", outside.err
    code, _, err = cli("config", "show", "--set", "horizons=[0]", subprocess=True, timeout=120)
    assert code == 2 and "horizons" in _one_line(err), err


def test_the_console_script_imports_the_package_on_pythonpath_not_the_checkout(tmp_path):
    """What tests/mutations.py relies on: a copy of the package first on PYTHONPATH is what a CLI process runs,
    even with the checkout (whose macd_ml/ is the real package) as its working directory."""
    cli_pkg = tmp_path / "macd_ml" / "flows" / "cli"
    cli_pkg.mkdir(parents=True)
    for init in (tmp_path / "macd_ml", tmp_path / "macd_ml" / "flows"):
        (init / "__init__.py").write_text("")
    (cli_pkg / "__init__.py").write_text("import sys\n\ndef main():\n    print('copy', sys.argv[1:])\n    return 7\n")
    env = {"PYTHONPATH": str(tmp_path), "PYTHONSAFEPATH": "1"}
    result = cli("synth", "--help", subprocess=True, cwd=ROOT, env=env, timeout=60)
    assert (result.code, result.out) == (7, "copy ['synth', '--help']\n"), result.err
