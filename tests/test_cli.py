"""The command line sets every config field by name, and refuses what it cannot use, naming the flag."""

import argparse
import dataclasses
import json

import pytest

from rlhf_course import cli, config_flags, pipeline
from rlhf_course.algorithms import pretrain, seq2seq


def _run_pipeline(monkeypatch, tmp_path, *flags):
    """The config that ``rlhf-course pipeline FLAGS`` would run, without running it."""
    seen = {}

    def fake_run(out, stages, config):
        seen["config"], seen["stages"] = config, stages
        return {}

    monkeypatch.setattr(pipeline, "run", fake_run)
    assert cli.main(["pipeline", "--out", str(tmp_path), *flags]) == 0
    return seen


def test_nested_config_fields_are_set_by_name_and_the_rest_keep_their_defaults(monkeypatch, tmp_path):
    seen = _run_pipeline(
        monkeypatch,
        tmp_path,
        "--ppo.lr",
        "3e-5",
        "--data.train_per_family",
        "7",
        "--sft.max_examples",
        "none",
        "--pg.baseline",
        "false",
        "--dpo.loss",
        "ipo",
        "--memory.lora-rank",
        "4",
        "--seed",
        "2",
        "--stages",
        "sft",
    )
    config = seen["config"]
    assert config.ppo.lr == 3e-5 and config.data.train_per_family == 7 and config.sft.max_examples is None
    assert config.pg.baseline is False and config.dpo.loss == "ipo" and config.memory.lora_rank == 4
    assert config.seed == 2 and seen["stages"] == ["sft"]
    default = pipeline.PipelineConfig()
    assert (
        config.ppo.clip_range == default.ppo.clip_range and config.data.eval_per_family == default.data.eval_per_family
    )
    assert _run_pipeline(monkeypatch, tmp_path)["config"] == default


@pytest.mark.parametrize(
    "flags, named, expected",
    [
        (["--ppo.lr", "fast"], "--ppo.lr", "expected a number, got 'fast'"),
        (["--sft.epochs", "2.5"], "--sft.epochs", "expected an integer"),
        (["--pg.baseline", "maybe"], "--pg.baseline", "expected true or false"),
        (["--dpo.loss", "kto"], "--dpo.loss", "expected one of dpo, ipo"),
        (["--reward.feedback", "stars"], "--reward.feedback", "expected one of comparisons, ratings, thumbs"),
        (["--ppo.lrr", "1e-5"], "--ppo.lrr", "unrecognized arguments"),
        (["--ppo.seed", "3"], "--ppo.seed", "unrecognized arguments"),  # each stage's seed is --seed
    ],
)
def test_an_unknown_or_ill_typed_flag_is_refused_naming_it(monkeypatch, tmp_path, capsys, flags, named, expected):
    monkeypatch.setattr(pipeline, "run", lambda *a, **k: pytest.fail("the pipeline ran"))
    with pytest.raises(SystemExit) as stop:
        cli.main(["pipeline", "--out", str(tmp_path), *flags])
    assert stop.value.code == 2
    error = capsys.readouterr().err
    assert named in error and expected in error, error


@pytest.mark.parametrize(
    "command, cls",
    [
        ("pipeline", pipeline.PipelineConfig),
        ("pretrain", pretrain.PretrainConfig),
        ("pretrain-t5", seq2seq.T5PretrainConfig),
    ],
)
def test_help_lists_every_config_field_with_its_default(capsys, command, cls):
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    shown = capsys.readouterr().out
    fields = list(config_flags._fields(cls, cls()))
    assert len(fields) > 10
    for name, _, default in fields:
        if name.rpartition(".")[2] == "seed" and "." in name and cls is pipeline.PipelineConfig and name != "data.seed":
            continue
        assert f"--{name} " in shown, name


def test_build_leaves_the_dataclass_defaults_unshared():
    parser = argparse.ArgumentParser()
    config_flags.add_flags(parser, pipeline.PipelineConfig)
    config = config_flags.build(pipeline.PipelineConfig, parser.parse_args(["--ppo.updates", "3"]))
    assert config.ppo.updates == 3 and pipeline.PipelineConfig().ppo.updates != 3
    assert dataclasses.replace(config, ppo=pipeline.PipelineConfig().ppo) == pipeline.PipelineConfig()


def test_a_run_writes_its_settings_and_config_repeats_them_with_flags_winning(monkeypatch, tmp_path):
    first = _run_pipeline(
        monkeypatch,
        tmp_path / "a",
        "--ppo.lr",
        "3e-5",
        "--sft.max_examples",
        "none",
        "--pg.baseline",
        "false",
        "--seed",
        "3",
    )["config"]
    saved = tmp_path / "a" / "config.json"
    assert json.loads(saved.read_text())["ppo"]["lr"] == 3e-5 and "seed" not in json.loads(saved.read_text())["ppo"]
    again = _run_pipeline(monkeypatch, tmp_path / "b", "--config", str(saved))["config"]
    assert again == first
    changed = _run_pipeline(monkeypatch, tmp_path / "c", "--config", str(saved), "--ppo.lr", "1e-4")["config"]
    assert changed == dataclasses.replace(first, ppo=dataclasses.replace(first.ppo, lr=1e-4))


@pytest.mark.parametrize(
    "content, expected",
    [
        ('{"ppo": {"lrr": 1e-5}}', "'ppo.lrr' is not a setting"),
        ('{"ppo": {"lr": "fast"}}', "ppo.lr: expected a number, got 'fast'"),
        ('{"ppo": {"seed": 3}}', "'ppo.seed' is not a setting"),
        ('{"ppo": ', "expected a readable JSON file of settings"),
        ("[1, 2]", "expected a JSON object of settings"),
    ],
)
def test_a_config_file_with_a_wrong_setting_is_refused_naming_it(monkeypatch, tmp_path, capsys, content, expected):
    monkeypatch.setattr(pipeline, "run", lambda *a, **k: pytest.fail("the pipeline ran"))
    path = tmp_path / "settings.json"
    path.write_text(content)
    with pytest.raises(SystemExit) as stop:
        cli.main(["pipeline", "--out", str(tmp_path / "out"), "--config", str(path)])
    assert stop.value.code == 2
    error = capsys.readouterr().err
    assert "argument --config:" in error and expected in error, error
    assert not (tmp_path / "out").exists()  # nothing written for a run that never started
