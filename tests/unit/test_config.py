"""Config validation: every bad input is one ConfigError line naming the field and what is allowed; the CLI turns it
into exit code 2 and leaves no run directory behind."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib
from typer.testing import CliRunner

from fedunlearn.cli import app
from fedunlearn.config import ExperimentConfig, load_config, to_toml
from fedunlearn.errors import ConfigError
from tests.conftest import TINY


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("data.colour=3", "data.colour: unknown key"),
        ("bogus=1", "bogus: unknown key"),
        ('train.rounds="many"', "train.rounds"),
        ("withdraw.clients=[12]", "withdraw.clients: [12] out of range; allowed: partition ids 0..3"),
        ("train.fraction=1.5", "train.fraction"),
        ("train.fraction=0", "train.fraction"),
        ('data.dataset="imagenet"', "allowed: digits"),
        ('data.partition="zipf"', "allowed: iid, dirichlet, shards"),
        ('model.name="vit"', "allowed: mlp, cnn, resnet"),
        ('unlearn.methods=["magic"]', "allowed: retrain"),
        ('audit.attacks=["oracle"]', "allowed: loss"),
        ("unlearn.finetune.rounds=-1", "unlearn.finetune.rounds"),
        ("unlearn.nosuch.x=1", "unknown key unlearn.nosuch"),
        ("withdraw.round=40", 'withdraw.round: 40 not allowed; allowed: "end" or 1..3'),
        ('sim.device="tpu"', "sim.device"),
    ],
)
def test_bad_values_name_the_field(override: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, TINY + [override])
    msg = str(err.value)
    assert needle in msg
    assert "\n" not in msg


def test_several_problems_reported_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.fraction=2", "data.nope=1"])
    assert "train.fraction" in str(err.value) and "data.nope" in str(err.value)


def test_resolved_config_round_trips_through_toml() -> None:
    cfg = load_config(None, TINY + ['unlearn.methods=["retrain","finetune"]', "unlearn.finetune.rounds=2"])
    again = ExperimentConfig.model_validate(tomllib.loads(to_toml(cfg)))
    assert again == cfg
    assert again.unlearn.params("finetune").rounds == 2  # type: ignore[attr-defined]


def test_quickstart_file_is_valid() -> None:
    cfg = load_config(Path(__file__).parents[2] / "experiments" / "quickstart.toml")
    assert cfg.data.clients == 10 and cfg.withdraw.clients == [0]


def test_set_parses_toml_values() -> None:
    cfg = load_config(None, ["data.clients=20", "withdraw.clients=[3, 4]", 'name="x"', "data.download=true"])
    assert cfg.data.clients == 20 and cfg.withdraw.clients == [3, 4] and cfg.name == "x" and cfg.data.download


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--set", "train.fraction=0"], "train.fraction"),
        (["--set", "withdraw.clients=[99]"], "withdraw.clients"),
        (["--set", 'data.dataset="npz"', "--set", 'data.path="missing.npz"'], "data.path"),
        (["--set", 'data.dataset="mnist"'], "data.data_dir"),
        (["--set", "nonsense"], "--set"),
    ],
)
def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path: Path, monkeypatch, args: list[str], needle: str) -> None:
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["run", *args, "--out", str(tmp_path / "out")])
    assert res.exit_code == 2, res.output
    assert needle in res.output
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "runs").exists()
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_cli_missing_config_file(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["run", str(tmp_path / "nope.toml")])
    assert res.exit_code == 2 and "file not found" in res.output


def test_cli_lists_methods_and_datasets() -> None:
    out = CliRunner().invoke(app, ["methods"]).output
    assert "retrain" in out and "finetune" in out
    out = CliRunner().invoke(app, ["datasets"]).output
    for name in ("digits", "mnist", "fashion_mnist", "cifar10", "npz", "synthetic"):
        assert name in out


@pytest.mark.parametrize("name", ["quickstart", "mnist", "cifar10"])
def test_shipped_experiments_validate(name: str) -> None:
    load_config(Path(__file__).parents[2] / "experiments" / f"{name}.toml")


def test_resolved_config_round_trips_strings_with_newlines_and_control_characters() -> None:
    """config.toml is written with tomli_w: strings the hand-written writer did not escape survive a round trip."""
    import tomllib

    from fedunlearn.config import ExperimentConfig, load_config, to_toml

    cfg = load_config(None)
    data = cfg.model_dump(mode="json")
    data["name"] = 'line one\nline "two"\t\x01 end\\'
    cfg = ExperimentConfig.model_validate(data)
    assert ExperimentConfig.model_validate(tomllib.loads(to_toml(cfg))) == cfg
