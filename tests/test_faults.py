"""Bad input answered clearly: each case names what was expected and where, and nothing saved is lost.

The cases here are the command line's; tests/test_labeling.py, test_resume.py, test_exercises.py and
test_models.py hold the faults of the labeling file, checkpoints, the checker and model loading.
"""
import pytest

from rlhf_course import cli


@pytest.mark.parametrize("argv, flag, expected", [
    (["pretrain", "--steps", "0"], "--steps", "an integer of at least 1"),
    (["pretrain", "--steps", "ten"], "--steps", "an integer of at least 1"),
    (["pretrain", "--seed", "-1"], "--seed", "an integer from 0 to 4294967295"),
    (["pretrain", "--seed", "1.5"], "--seed", "an integer from 0"),
    (["pipeline", "--seed", str(2**40)], "--seed", "an integer from 0 to 4294967295"),
    (["pipeline", "--stages", ""], "--stages", "comma-separated stages from sft, reward"),
    (["pipeline", "--stages", ","], "--stages", "comma-separated stages from sft, reward"),
    (["pipeline", "--stages", "sft,rewards"], "--stages", "(rewards unknown)"),
    (["pipeline", "--base-model", "/nonexistent/model"], "--base-model", "a local model directory with a config.json"),
    (["parallel-check", "--steps", "2"], "--steps", "an integer of at least 4"),
    (["parallel-check", "--updates", "0"], "--updates", "an integer of at least 1"),
    (["parallel-check", "--batch-size", "1"], "--batch-size", "an integer of at least 4"),
])
def test_a_bad_command_line_value_names_the_flag_and_what_it_accepts(argv, flag, expected, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv + ["--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert f"argument {flag}: expected" in error and expected in error, error
    assert not (tmp_path / "out").exists()  # nothing was started, so nothing was written


def test_an_empty_model_directory_is_refused_before_anything_runs(tmp_path, capsys):
    (tmp_path / "model").mkdir()
    with pytest.raises(SystemExit):
        cli.main(["pipeline", "--base-model", str(tmp_path / "model"), "--out", str(tmp_path / "out")])
    assert "config.json" in capsys.readouterr().err and not (tmp_path / "out").exists()
