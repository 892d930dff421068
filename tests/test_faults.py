"""Bad input answered clearly: each case names what was expected and where, and nothing saved is lost.

Command-line values, data files, model directories, the labeling file (a full disk, two writers), and a
learner's function that passed its checks but misbehaves in training. tests/test_labeling.py,
test_resume.py, test_exercises.py and test_models.py hold more: torn labeling files, checkpoints of another
run, the checker's time limit and child process, hostile model code.
"""

import json
import random
import re
import shutil
import subprocess
import sys
import time

import pytest
import torch

from rlhf_course import cli, exercises
from rlhf_course.algorithms import ppo
from rlhf_course.core import models, registry
from rlhf_course.core.registry import ExerciseOutputError
from rlhf_course.simulation import data, world
from rlhf_course.simulation.data import DataFileError
from rlhf_course.teaching.labeling import LabelingSession, pairs_for_labeling


@pytest.mark.parametrize(
    "argv, flag, expected",
    [
        (["pretrain", "--steps", "0"], "--steps", "an integer of at least 1"),
        (["pretrain", "--steps", "ten"], "--steps", "an integer of at least 1"),
        (["pretrain", "--seed", "-1"], "--seed", "an integer from 0 to 4294967295"),
        (["pretrain", "--seed", "1.5"], "--seed", "an integer from 0"),
        (["pretrain-t5", "--steps", "0"], "--steps", "an integer of at least 1"),
        (["pipeline", "--seed", str(2**40)], "--seed", "an integer from 0 to 4294967295"),
        (["pipeline", "--stages", ""], "--stages", "comma-separated stages from sft, reward"),
        (["pipeline", "--stages", ","], "--stages", "comma-separated stages from sft, reward"),
        (["pipeline", "--stages", "sft,rewards"], "--stages", "(rewards unknown)"),
        (
            ["pipeline", "--base-model", "/nonexistent/model"],
            "--base-model",
            "a local model directory with a config.json",
        ),
        (["parallel-check", "--steps", "2"], "--steps", "an integer of at least 4"),
        (["parallel-check", "--updates", "0"], "--updates", "an integer of at least 1"),
        (["parallel-check", "--batch-size", "1"], "--batch-size", "an integer of at least 4"),
        (["parallel-check", "--batch-size", "6"], "--batch-size", "a multiple of 4"),
    ],
)
def test_a_bad_command_line_value_names_the_flag_and_what_it_accepts(argv, flag, expected, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv + ["--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert re.search(rf"argument (\S+/)?{flag}(/\S+)?: expected", error) and expected in error, error
    assert not (tmp_path / "out").exists()  # nothing was started, so nothing was written


def test_an_empty_model_directory_is_refused_before_anything_runs(tmp_path, capsys):
    (tmp_path / "model").mkdir()
    with pytest.raises(SystemExit):
        cli.main(["pipeline", "--base-model", str(tmp_path / "model"), "--out", str(tmp_path / "out")])
    assert "config.json" in capsys.readouterr().err and not (tmp_path / "out").exists()


# --- data files: every malformed file is a DataFileError (or FileNotFoundError) naming the file and line ----


GOOD = {
    "prompt": [{"role": "user", "content": "hi"}],
    "chosen": [{"role": "assistant", "content": "a"}],
    "rejected": [{"role": "assistant", "content": "b"}],
}
GOOD_LINE = json.dumps(GOOD).encode() + b"\n"


@pytest.mark.parametrize(
    "content, line, says",
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00", 1, "not UTF-8 text"),
        (GOOD_LINE + "caf\xe9\n".encode("latin-1"), 2, "not UTF-8 text"),
        (b"\xef\xbb\xbf" + GOOD_LINE, 1, "not valid JSON"),
        (GOOD_LINE + b"[1, 2]\n", 2, "expected a JSON object, got list"),
        (b"null\n", 1, "expected a JSON object"),
        (GOOD_LINE + GOOD_LINE[:40], 2, "not valid JSON"),
        (json.dumps({**GOOD, "chosen": "a"}).encode() + b"\n", 1, "field 'chosen'"),
        (
            json.dumps({"prompt": GOOD["prompt"], "chosen": GOOD["chosen"]}).encode() + b"\n",
            1,
            "missing field 'rejected'",
        ),
        (GOOD_LINE + b"\n\n" + b'{"prompt": 1e999}\n', 4, "field 'prompt'"),
    ],
)
def test_a_malformed_data_file_names_its_file_and_line(tmp_path, content, line, says):
    path = tmp_path / "comparisons.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataFileError) as error:
        data.load_jsonl(path, "preference")
    assert f"{path}, line {line}: " in str(error.value) and says in str(error.value), str(error.value)
    assert path.read_bytes() == content  # reading never changes the file


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_an_empty_data_file_says_so(tmp_path, content):
    (tmp_path / "rows.jsonl").write_bytes(content)
    with pytest.raises(DataFileError, match="the file has no rows"):
        data.load_jsonl(tmp_path / "rows.jsonl", "preference")


@pytest.mark.parametrize("where", ["missing.jsonl", "."])
def test_a_data_path_that_is_not_a_file_says_so(tmp_path, where):
    with pytest.raises(FileNotFoundError, match="No data file at"):
        data.load_jsonl(tmp_path / where, "preference")


# --- model directories: named, with what to do; nothing from a pickle, nothing remote --------------------
def _model_copy(tmp_path, damage):
    path = tmp_path / "model"
    shutil.copytree(models.BASE_MODEL_DIR, path)
    damage(path)
    return path


def _truncate(name):
    def damage(path):
        raw = (path / name).read_bytes()
        (path / name).write_bytes(raw[: len(raw) // 2])

    return damage


@pytest.mark.parametrize(
    "damage, load, says",
    [
        (lambda p: shutil.rmtree(p), models.load_model, "No model at"),
        (lambda p: (p / "config.json").unlink(), models.load_model, "No model at"),
        (lambda p: (p / "config.json").unlink(), models.load_tokenizer, "No model at"),
        (lambda p: (p / "model.safetensors").unlink(), models.load_model, "has no .safetensors weights"),
        (
            lambda p: ((p / "model.safetensors").unlink(), (p / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")),
            models.load_model,
            "loads safetensors only",
        ),
        (_truncate("model.safetensors"), models.load_model, "is not a readable safetensors file"),
        (
            lambda p: (p / "model.safetensors").write_bytes(b"\0" * 100),
            models.load_model,
            "is not a readable safetensors",
        ),
        (
            lambda p: ((p / "tokenizer.json").unlink(), (p / "tokenizer_config.json").unlink()),
            models.load_tokenizer,
            "has no tokenizer files",
        ),
        (lambda p: (p / "config.json").write_text("{not json"), models.load_model, "config.json"),
    ],
)
def test_a_damaged_model_directory_is_named_with_what_is_wrong(tmp_path, damage, load, says):
    path = _model_copy(tmp_path, damage)
    with pytest.raises((FileNotFoundError, ValueError, OSError)) as error:
        load(path)
    assert says in str(error.value) and str(path) in str(error.value), str(error.value)


# --- the labeling file: a full disk, two writers, a file that is not a judgments file ----------------------
@pytest.fixture
def pairs():
    tasks = world.generate_tasks("validation", 3)
    candidates = [[world.render(t, "polite"), world.render(t, "curt")] for t in tasks]
    return pairs_for_labeling(tasks, candidates, n=8)


def test_a_binary_file_in_place_of_the_judgments_is_an_error_that_names_it_and_keeps_it(tmp_path, pairs):
    path = tmp_path / "judgments.jsonl"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    with pytest.raises(DataFileError, match="not a judgments file"):
        LabelingSession(pairs, path)
    assert path.read_bytes() == b"\x89PNG\r\n\x1a\n\x00\xff"


def test_two_sessions_writing_one_file_keep_every_judgment(tmp_path, pairs):
    path = tmp_path / "judgments.jsonl"
    first, second = LabelingSession(pairs, path), LabelingSession(pairs[::-1], path)
    for _ in range(3):
        first.record("a")
        second.record("b")
    resumed = LabelingSession(pairs, path)
    assert len(resumed.judgments) == 6 and len(path.read_text().splitlines()) == 6


def test_a_disk_that_fills_in_the_middle_of_a_judgment_loses_nothing_saved(tmp_path, pairs):
    path = tmp_path / "judgments.jsonl"
    session = LabelingSession(pairs, path)
    session.record("a")
    session.record("b")
    saved = path.read_bytes()
    # a child process whose file-size limit ends the next write partway through its line (EFBIG, as a full disk)
    script = (
        f"import resource, signal, sys; sys.path[:0] = {sys.path!r}\n"
        "from tests.test_faults import _session\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({len(saved) + 40}, resource.RLIM_INFINITY))\n"
        f"session = _session({str(path)!r})\n"
        "try:\n    session.record('tie')\nexcept OSError as err:\n    print('write failed:', err.errno)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=str(_root()))
    assert "write failed" in done.stdout, done.stderr
    assert path.read_bytes().startswith(saved) and path.stat().st_size > len(saved)  # a torn line after them
    resumed = LabelingSession(pairs, path)
    assert len(resumed.judgments) == 2  # the half-written judgment was never made
    resumed.record("b")
    assert len(LabelingSession(pairs, path).judgments) == 3  # and the file stays readable after the next one


def _root():
    from pathlib import Path

    return Path(__file__).resolve().parent.parent


def _session(path):
    tasks = world.generate_tasks("validation", 3)
    candidates = [[world.render(t, "polite"), world.render(t, "curt")] for t in tasks]
    return LabelingSession(pairs_for_labeling(tasks, candidates, n=8), path)


# --- a learner's function that passed its checks but breaks in training ----------------------------------


@pytest.fixture
def plugged():
    yield exercises.plug_in
    registry.reset()


def test_a_plugged_in_function_that_returns_nan_stops_training_naming_the_exercise(plugged):
    def whiten(values, mask, shift_mean=True):  # right on the checks' inputs, NaN on a constant row
        return (values - values.mean()) / values.std() * mask

    plugged("whiten", whiten)
    with pytest.raises(ExerciseOutputError, match=r"Exercise 'whiten' \(your whiten\): it returned NaN"):
        ppo.whiten(torch.ones(2, 3), torch.ones(2, 3))


def test_nan_that_comes_in_is_not_blamed_on_the_learner(plugged):
    def whiten(values, mask, shift_mean=True):
        return values * mask

    plugged("whiten", whiten)
    values = torch.tensor([[float("nan"), 1.0]])
    assert ppo.whiten(values, torch.ones(1, 2)).isnan().any()  # passed through: the cause is upstream


def test_an_infinite_loss_from_a_plugged_in_function_stops_training(plugged):
    from rlhf_course.algorithms import reward_model

    def bradley_terry_loss(chosen, rejected):
        return -torch.log(torch.sigmoid(chosen - rejected)).mean()  # log(0) for a large negative margin

    plugged("bradley_terry_loss", bradley_terry_loss)
    with pytest.raises(ExerciseOutputError, match="a loss must be finite"):
        reward_model.bradley_terry_loss(torch.tensor([-200.0]), torch.tensor([0.0]))


@pytest.mark.parametrize(
    "value, says",
    [("gpu", "is not a device: expected cpu, cuda or cuda:N"), ("cuda:0", "asks for a GPU, but torch sees none")],
)
def test_a_bad_device_setting_names_the_variable(monkeypatch, value, says):
    from rlhf_course.core import runtime

    if value.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the setting is valid here")
    monkeypatch.setenv("RLHF_COURSE_DEVICE", value)
    with pytest.raises(ValueError, match=f"RLHF_COURSE_DEVICE='{value}'"):
        runtime.device()
    with pytest.raises(ValueError, match=says):
        runtime.device()


def test_an_over_long_demonstration_is_named_by_its_row_in_the_data_set():
    from rlhf_course.algorithms import sft

    tok, model = models.load_tokenizer(), models.load_model(dev=torch.device("cpu"))
    rows = data.sft_dataset("validation").to_list()[:30]
    rows[17] = {**rows[17], "completion": [{"role": "assistant", "content": "word " * 2000}]}
    config = sft.SFTConfig(epochs=1, max_examples=25, seed=3)
    picked = random.Random(3).sample(range(30), 25)
    assert 17 in picked  # the sample keeps the long row, at another place in it
    with pytest.raises(ValueError, match=r"first: row 17 of the data set"):
        sft.train_sft(model, tok, rows, config)


# --- kills at random moments: a training run and a labeling session pick up where they were ------------------
KILLED_SFT = """
import sys, torch
from safetensors.torch import save_file
from rlhf_course.core import models
from rlhf_course.simulation import data
from rlhf_course.algorithms.sft import SFTConfig, train_sft
model, tok = models.load_model(dev=torch.device("cpu")), models.load_tokenizer()
rows = data.sft_dataset("train", data.DataConfig(train_per_family=40))
config = SFTConfig(epochs=2, max_examples=64, batch_size=16, warmup_steps=3, checkpoint_every=1)
train_sft(model, tok, rows, config, on_step=lambda row: print("step", row["step"], flush=True),
          checkpoint_dir=sys.argv[1])
save_file({k: v.clone() for k, v in model.state_dict().items()}, sys.argv[2])
"""


def _run_and_kill(argv, rng, kills: int) -> None:
    """Start ``argv`` ``kills`` times, each killed (SIGKILL) at a random moment after its first step, then
    once more to the end."""
    for _ in range(kills):
        child = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=str(_root()))
        for line in child.stdout:  # wait for it to be under way, then kill it mid-step or mid-save
            if line.startswith("step"):
                break
        time.sleep(rng.uniform(0.0, 1.5))
        child.kill()
        child.wait()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=str(_root()))
    assert done.returncode == 0, done.stderr[-2000:]


def test_an_sft_run_killed_at_random_moments_ends_as_an_uninterrupted_one(tmp_path):
    from safetensors.torch import load_file

    script = tmp_path / "train.py"
    script.write_text(KILLED_SFT)
    whole = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "whole_checkpoint"), str(tmp_path / "whole.st")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=str(_root()),
    )
    assert whole.returncode == 0, whole.stderr[-2000:]
    _run_and_kill(
        [sys.executable, str(script), str(tmp_path / "checkpoint"), str(tmp_path / "killed.st")],
        random.Random(0),
        kills=3,
    )
    a, b = load_file(tmp_path / "whole.st"), load_file(tmp_path / "killed.st")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


KILLED_LABELING = """
import sys
sys.path.insert(0, sys.argv[2])  # the repository, for the tests' helpers
from tests.test_faults import _session
session = _session(sys.argv[1])
while session.current() is not None:
    session.record("ab"[len(session.judgments) % 2])
    print("step", len(session.judgments), flush=True)
"""


def test_a_labeling_session_killed_at_random_moments_keeps_every_judgment_it_finished(tmp_path):
    script = tmp_path / "label.py"
    script.write_text(KILLED_LABELING)
    path = tmp_path / "judgments.jsonl"
    _run_and_kill([sys.executable, str(script), str(path), str(_root())], random.Random(1), kills=3)
    session = _session(path)
    assert session.current() is None and len(session.judgments) == len(session.pairs)
    assert len(path.read_text().splitlines()) == len(session.pairs)  # each judgment once, none torn or doubled


def test_a_lessons_saved_results_are_found_only_under_their_own_key_and_never_half_written(tmp_path, monkeypatch):
    """Presenter mode shows what a full run saved: never results of other settings, never a torn file."""
    import os

    from rlhf_course import checkpoints

    monkeypatch.setenv("RLHF_COURSE_CACHE", str(tmp_path))
    key = {"seed": 0, "settings": {"lr": 1e-3, "steps": 16}}
    assert checkpoints.saved_results("lesson09", key) is None
    path = checkpoints.save_results("lesson09", key, {"replies": ["Sure! 12"]})
    assert checkpoints.saved_results("lesson09", {"settings": {"steps": 16, "lr": 1e-3}, "seed": 0}) == {
        "replies": ["Sure! 12"]
    }  # the same key written in another order
    assert checkpoints.saved_results("lesson09", {**key, "seed": 1}) is None
    assert checkpoints.saved_results("lesson09", {"seed": 0, "settings": {"lr": 2e-3, "steps": 16}}) is None

    def full_disk(fd):
        raise OSError(28, "No space left on device")  # the bytes were written, but never reach the disk

    with monkeypatch.context() as m:
        m.setattr(os, "fsync", full_disk)
        with pytest.raises(OSError, match="No space"):
            checkpoints.save_results("lesson09", key, {"replies": ["Sure! 13"]})
    assert checkpoints.saved_results("lesson09", key) == {"replies": ["Sure! 12"]}  # the last whole run's
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # and no torn file beside it

    path.write_text('{"replies": ["Sure! 1')  # damaged by something else: the lesson trains again
    assert checkpoints.saved_results("lesson09", key) is None
    with pytest.raises(ValueError, match="letters, digits and underscores"):
        checkpoints.save_results("../elsewhere", key, {})
