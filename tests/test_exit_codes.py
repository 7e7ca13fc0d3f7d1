"""Exit codes and messages of bad input (docs/data.md, "Running on your own candles"): 2 and one line naming the key,
value or file, never a traceback, a hang, or a number that blames another key."""

from __future__ import annotations

import pytest

from tests.cliutil import cli


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("dead_zone_bps=1e400", "dead_zone_bps"),
        ("horizons=[5,5]", "repeat"),
        ("force=1", "force"),
        ("stacking.include_reference=2", "stacking.include_reference"),
        ("horizons=" + "[" * 100_000, "nested too deeply"),
    ],
)
def test_config_values_that_cannot_mean_what_they_say_are_refused(override, named, tmp_path):
    code, _, err = cli("retrain", "--out", str(tmp_path / "out"), "--set", override)
    assert code == 2 and named in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists(), "nothing written"


def test_a_config_file_of_two_megabytes_of_brackets_is_bad_input(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text("[" * 2_000_000)
    code, _, err = cli("retrain", "--out", str(tmp_path / "out"), "--config", str(cfg))
    assert code == 2 and str(cfg) in err and "nested too deeply" in err, err


@pytest.mark.parametrize(
    "argv",
    [
        ["predict", "--bundle", "b.tar.gz", "--data", ".", "--last", "-1"],
        ["predict", "--bundle", "b.tar.gz", "--data", ".", "--last", "0"],
        ["shadow", "--bundle", "b.tar.gz", "--data", ".", "--log", "l.jsonl", "--last", "-3"],
        ["backtest", "run", "--data", ".", "--since", "yesterday"],
        ["backtest", "run", "--data", ".", "--until", "soon"],
    ],
)
def test_flag_values_are_checked_before_anything_runs(argv):
    code, _, err = cli(*argv)
    assert code == 2 and argv[-1] in err, err
    assert err.startswith(f"macd-ml {argv[0]}: error: argument "), err  # the parser's, before the command runs


def test_an_expiry_that_is_not_in_the_future_is_bad_input(tmp_path):
    code, _, err = cli("publish", "--refresh", "--to", str(tmp_path / "dest"), "--expires-days", "0")
    assert code == 2 and "--expires-days" in err, err
    assert not (tmp_path / "dest").exists()
