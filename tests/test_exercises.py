import importlib
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from known_wrong import WRONG

from rlhf_course import exercises
from rlhf_course.core import registry
from rlhf_course.core.language_model import next_token_loss, pad_batch


@pytest.mark.parametrize("exercise_id", list(exercises.CATALOG))
def test_solution_passes(exercise_id):
    assert exercises.check(exercise_id, exercises.SOLUTIONS_DIR, verbose=False).passed


@pytest.mark.parametrize("exercise_id", list(exercises.CATALOG))
def test_stub_fails_and_says_not_implemented(exercise_id):
    result = exercises.check(exercise_id, exercises.EXERCISES_DIR, verbose=False)
    assert not result.passed
    assert all("not implemented yet" in msg for _, ok, msg in result.lines)


def test_every_exercise_has_eight_known_wrong_implementations():
    assert set(WRONG) == set(exercises.CATALOG)
    assert all(len(wrongs) >= 8 for wrongs in WRONG.values()), {e: len(w) for e, w in WRONG.items() if len(w) < 8}


@pytest.mark.parametrize(
    "exercise_id, wrong, hint",
    [(e, fn, hint) for e, wrongs in WRONG.items() for fn, hint in wrongs],
    ids=lambda v: getattr(v, "__name__", None) if callable(v) else None,
)
def test_known_wrong_implementation_fails_with_its_hint(exercise_id, wrong, hint):
    result = exercises.run_checks(exercise_id, wrong)
    assert not result.passed
    messages = " ".join(msg for _, ok, msg in result.lines if not ok)
    assert hint in messages, messages


def test_each_lesson_has_one_solution_one_checks_module_and_one_known_wrong_module_of_the_same_name():
    checks_dir = Path(exercises.__file__).parent / "checks"
    known_wrong = Path(__file__).parent / "known_wrong"
    solutions = {p.stem for p in exercises.SOLUTIONS_DIR.glob("lesson*.py")}
    assert {p.stem for p in checks_dir.glob("lesson*.py")} == solutions
    assert {p.stem for p in known_wrong.glob("lesson*.py")} == solutions
    for exercise in exercises.CATALOG.values():  # each exercise is written in the file its checks module names
        assert f"def {exercise.id}(" in (exercises.SOLUTIONS_DIR / exercise.file).read_text(), exercise.id
        assert exercise.file == f"lesson{exercise.lesson}" + exercise.file[len("lessonNN") :]
    for module in solutions:
        wrong = importlib.import_module(f"known_wrong.{module}").WRONG
        assert set(wrong) == {e.id for e in exercises.CATALOG.values() if e.file == f"{module}.py"}, module


def test_exercises_are_generated_from_solutions():
    for solution in sorted(exercises.SOLUTIONS_DIR.glob("*.py")):
        generated = exercises.strip_solutions(solution.read_text())
        committed = (exercises.EXERCISES_DIR / solution.name).read_text()
        assert committed == generated, (
            f"exercises/{solution.name} is out of date: run `rlhf-course make-exercises --replace`"
        )
    assert {p.name for p in exercises.SOLUTIONS_DIR.glob("*.py")} == {
        p.name for p in exercises.EXERCISES_DIR.glob("*.py")
    }


def test_make_exercises_never_overwrites_what_a_learner_wrote(tmp_path):
    solutions, mine = tmp_path / "solutions", tmp_path / "exercises"
    solutions.mkdir()
    (solutions / "lesson09.py").write_text("def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION\n")
    (solutions / "lesson10.py").write_text("def g():\n    ### BEGIN SOLUTION\n    return 2\n    ### END SOLUTION\n")
    stub = exercises.strip_solutions((solutions / "lesson09.py").read_text())
    assert [what for _, what in exercises.make_exercises(solutions, mine)] == ["written", "written"]
    work = "def f():\n    return 41 + 1  # my attempt\n"
    (mine / "lesson09.py").write_text(work)
    done = dict(exercises.make_exercises(solutions, mine))
    assert (mine / "lesson09.py").read_text() == work  # kept
    assert (mine / "lesson09.py.new").read_text() == stub and "kept" in done[mine / "lesson09.py"]
    assert done[mine / "lesson10.py"] == "unchanged"
    exercises.make_exercises(solutions, mine, replace=True)  # the instructor's regeneration
    assert (mine / "lesson09.py").read_text() == stub and (mine / "lesson09.py.bak").read_text() == work


def test_strip_solutions_keeps_indentation_and_needs_markers():
    src = "def f():\n    x = 1\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION\n"
    assert (
        exercises.strip_solutions(src) == "def f():\n    x = 1\n    # YOUR CODE HERE\n    raise NotImplementedError()\n"
    )
    with pytest.raises(ValueError, match="BEGIN SOLUTION"):
        exercises.strip_solutions("def f():\n    return 1\n")


def test_plugged_in_function_runs_and_reset_restores_reference():
    calls = []

    def learner_pad(sequences, pad_id, side="right"):
        calls.append(side)
        return pad_batch.reference(sequences, pad_id, side)

    exercises.plug_in("pad_batch", learner_pad)
    try:
        pad_batch([[1, 2], [3]], 0)
        assert calls == ["right"]
        assert registry.active()["pad_batch"].endswith("learner_pad")
    finally:
        registry.reset()
    pad_batch([[1, 2], [3]], 0)
    assert calls == ["right"] and registry.active()["pad_batch"] == "reference"


def test_wrong_output_shape_names_the_exercise_and_expected_shape():
    exercises.plug_in("next_token_loss", lambda logits, labels: torch.zeros(logits.shape[0]))
    try:
        with pytest.raises(registry.ExerciseOutputError, match=r"Exercise 'next_token_loss'.*shape \(\)"):
            next_token_loss(torch.zeros(2, 3, 5), torch.zeros(2, 3, dtype=torch.long))
    finally:
        registry.reset()


def test_wrong_dtype_is_reported():
    exercises.plug_in("pad_batch", lambda seqs, pad_id, side="right": (torch.zeros(2, 2), torch.zeros(2, 2)))
    try:
        with pytest.raises(registry.ExerciseOutputError, match=r"'pad_batch'.*dtype torch.int64"):
            pad_batch([[1, 2], [3]], 0)
    finally:
        registry.reset()


def test_plug_in_passing_uses_solutions_only_where_they_pass(tmp_path):
    try:
        used = exercises.plug_in_passing(impl=exercises.SOLUTIONS_DIR, verbose=False)
        assert all(used.values())
        assert all(v != "reference" for v in registry.active().values())
        used = exercises.plug_in_passing(impl=exercises.EXERCISES_DIR, verbose=False)
        assert not any(used.values())
        assert all(v == "reference" for v in registry.active().values())
    finally:
        registry.reset()


def test_check_loads_a_single_file_and_reports_a_missing_one(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text((exercises.SOLUTIONS_DIR / "lesson02_sft.py").read_text())
    assert exercises.check("sft_labels", path, verbose=False).passed
    missing = exercises.check("sft_labels", tmp_path / "nothing.py", verbose=False)
    assert not missing.passed and "No exercise file" in missing.lines[0][2]


def test_learner_crash_is_reported_with_location():
    def crashes(input_ids, attention_mask, prompt_lengths):
        return input_ids[:, 99]

    result = exercises.run_checks("sft_labels", crashes)
    assert not result.passed and "IndexError" in result.lines[0][2]


@pytest.mark.parametrize("impl, code", [("solutions", 0), ("exercises", 1)])
def test_cli_check_exit_status(impl, code):
    proc = subprocess.run(
        [sys.executable, "-m", "rlhf_course.cli", "check", "all", "--impl", str(exercises.REPO / impl)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert proc.stdout.count("PASS" if code == 0 else "FAIL") >= 4


def test_cli_lists_exercises_in_aligned_columns():
    proc = subprocess.run([sys.executable, "-m", "rlhf_course.cli", "exercises"], capture_output=True, text=True)
    assert proc.returncode == 0
    for exercise in exercises.CATALOG.values():
        assert exercise.id in proc.stdout and exercise.file in proc.stdout
    assert "not started" in proc.stdout
    rows = proc.stdout.splitlines()
    assert len({row.index(" ", len(max(exercises.CATALOG, key=len))) for row in rows}) == 1  # ids never push on
    assert len({row.index(f" {e.file}") for row, e in zip(rows[1:], exercises.CATALOG.values())}) == 1


def test_check_all_on_one_file_checks_the_exercises_it_defines(tmp_path):
    """Not a line of AttributeError for each exercise the file leaves out."""
    solution = (exercises.SOLUTIONS_DIR / "lesson05_ppo.py").read_text()
    mine = tmp_path / "mine.py"
    mine.write_text(solution[: solution.index("def gae(")])  # whiten only (and what it imports)
    assert exercises.defined_in(mine) == ["whiten"]
    command = [sys.executable, "-m", "rlhf_course.cli", "check", "all", "--impl"]
    proc = subprocess.run(command + [str(mine)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "whiten: all checks passed" in proc.stdout and "AttributeError" not in proc.stdout + proc.stderr
    (tmp_path / "none.py").write_text("x = 1\n")
    proc = subprocess.run(command + [str(tmp_path / "none.py")], capture_output=True, text=True)
    assert proc.returncode == 2 and "defines none of the exercises" in proc.stderr


def test_a_check_that_trips_over_a_wrong_output_says_so_and_never_blames_the_learners_code():
    def pairwise_accuracy(chosen, rejected):
        return [0.5]  # a list where a tensor belongs: the check's own comparison fails on it

    messages = [msg for _, ok, msg in exercises.run_checks("pairwise_accuracy", pairwise_accuracy).lines if not ok]
    assert messages and all("your function raised" not in m for m in messages)
    assert any("should be a torch.Tensor" in m for m in messages)


def test_a_stable_but_summed_bradley_terry_loss_is_told_it_summed_not_that_it_underflows():
    def bradley_terry_loss(chosen, rejected, margin=None):
        return -torch.nn.functional.logsigmoid(chosen - rejected - (0.0 if margin is None else margin)).sum()

    messages = " ".join(msg for _, ok, msg in exercises.run_checks("bradley_terry_loss", bradley_terry_loss).lines)
    assert "summed instead of averaged" in messages and "underflows" not in messages


def test_an_input_written_in_place_is_caught_before_it_corrupts_the_expected_value():
    """A check that computes its expected value after calling the function would compare against the
    corrupted input; the guard compares every input with a copy taken before the call."""

    def whiten(x, mask, shift_mean=True):
        x.zero_()
        return x

    result = exercises.run_checks("whiten", whiten)
    assert all(not ok and "changed its input x in place" in msg for _, ok, msg in result.lines)


def test_a_function_that_never_returns_fails_its_checks_within_the_time_limit():
    def forever(logits, top_p):
        while True:
            pass

    start = time.perf_counter()
    result = exercises.run_checks("top_p_filter", forever, seconds=0.5)
    assert not result.passed and time.perf_counter() - start < 30
    assert all("did not finish within 0.5 s" in msg for _, ok, msg in result.lines if not ok)


def test_a_function_that_exits_the_program_fails_instead_of_passing():
    def leave(logits, top_p):
        sys.exit(0)

    result = exercises.run_checks("top_p_filter", leave)
    assert not result.passed
    assert all("called sys.exit(0)" in msg for _, ok, msg in result.lines)


def test_check_exits_nonzero_from_the_command_line_when_the_function_exits_zero(tmp_path):
    (tmp_path / "lesson01_sampling.py").write_text("import sys\n\ndef top_p_filter(logits, top_p):\n    sys.exit(0)\n")
    done = subprocess.run(
        [sys.executable, "-m", "rlhf_course.cli", "check", "top_p_filter", "--impl", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1 and "called sys.exit(0)" in done.stdout


def _learner_file(tmp_path, body: str) -> Path:
    path = tmp_path / "lesson01_sampling.py"
    path.write_text("def top_p_filter(logits, top_p):\n" + "".join(f"    {line}\n" for line in body.splitlines()))
    return path


def test_a_learner_function_that_kills_its_process_fails_its_check_and_the_caller_lives_on(tmp_path):
    result = exercises.check("top_p_filter", _learner_file(tmp_path, "import os\nos._exit(0)"), verbose=False)
    assert not result.passed and "ended the checking process (exit status 0" in result.lines[0][2]
    assert exercises.check("top_p_filter", exercises.SOLUTIONS_DIR, verbose=False).passed  # and checking goes on


def test_a_learner_function_that_blocks_the_alarm_is_killed_at_the_child_limit(tmp_path, monkeypatch):
    exercises.check("top_p_filter", exercises.SOLUTIONS_DIR, verbose=False)  # the checking server is up
    monkeypatch.setattr(exercises, "CHECK_SECONDS", 0.5)
    monkeypatch.setattr(exercises, "CHILD_START_SECONDS", 3)
    stubborn = _learner_file(
        tmp_path, "import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True:\n    pass"
    )
    start = time.perf_counter()
    result = exercises.check("top_p_filter", stubborn, verbose=False)
    assert not result.passed and "did not finish within" in result.lines[0][2]
    assert time.perf_counter() - start < 30


def test_what_the_learner_prints_is_shown_by_the_check(tmp_path, capsys):
    exercises.check("top_p_filter", _learner_file(tmp_path, "print('shape of logits:', logits.shape)\nreturn logits"))
    shown = capsys.readouterr().out
    assert "shape of logits: torch.Size" in shown and "FAIL" in shown


def test_a_thread_the_learner_leaves_running_does_not_hold_the_check(tmp_path):
    lingering = _learner_file(
        tmp_path,
        "import threading, time\nthreading.Thread(target=time.sleep, args=(60,)).start()\nraise NotImplementedError",
    )
    start = time.perf_counter()
    result = exercises.check("top_p_filter", lingering, verbose=False)
    assert not result.passed and time.perf_counter() - start < 30


def test_check_from_a_script_without_a_main_guard_checks_instead_of_rerunning_it(tmp_path):
    script = tmp_path / "my_check.py"
    script.write_text(
        "from rlhf_course import exercises\nprint('script body ran')\n"
        f"print('passed:', exercises.check('top_p_filter', {str(exercises.SOLUTIONS_DIR)!r}, "
        "verbose=False).passed)\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.stdout.count("script body ran") == 1 and "passed: True" in done.stdout, done.stdout + done.stderr


def test_every_exercise_declares_a_validator_that_accepts_the_reference_on_its_checks():
    # the reference, run as if it were the learner's function, with its output validated on every call as the
    # training loop validates a plugged-in function's: the validator must not object to any of the checks' inputs
    for exercise in exercises.CATALOG.values():
        assert callable(exercise.validate), exercise.id

        def validated(*args, exercise=exercise, **kwargs):
            out = exercise.reference(*args, **kwargs)
            exercise.validate(out, *args, **kwargs)
            return out

        try:
            result = exercises.run_checks(exercise.id, validated)
            assert result.passed, result
        finally:
            registry.reset()
