import json

import pytest

from rlhf_course.simulation import world
from rlhf_course.simulation.data import DataFileError
from rlhf_course.teaching.labeling import LabelingSession, labeling_widget, pairs_for_labeling, verdict


@pytest.fixture
def pairs():
    tasks = world.generate_tasks("validation", 3)
    candidates = [
        [world.render(t, "polite"), world.render(t, "rambling", t.wrong), world.render(t, "curt")] for t in tasks
    ]
    return pairs_for_labeling(tasks, candidates, n=12)


def _buttons(widget):
    return {b.description: b for b in widget.children[2].children}


def test_session_killed_halfway_resumes_and_keeps_every_judgment_once(tmp_path, pairs):
    path = tmp_path / "judgments.jsonl"
    widget = labeling_widget(LabelingSession(pairs, path))
    buttons = _buttons(widget)
    for description in ["A is better", "B is better", "Tie", "Skip", "A is better", "B is better"]:
        buttons[description].click()
    del widget, buttons  # the tab is closed or the kernel dies

    resumed = LabelingSession(pairs, path)
    assert len(resumed.judgments) == 6 and resumed.current() == pairs[6]
    widget = labeling_widget(resumed)
    assert "6 / 12 judged" in widget.children[-1].value
    while resumed.current() is not None:
        _buttons(widget)["A is better"].click()
    assert all(b.disabled for b in _buttons(widget).values())

    ids = [json.loads(line)["pair_id"] for line in path.read_text().splitlines()]
    assert sorted(ids) == sorted(p["pair_id"] for p in pairs)  # each pair on disk exactly once


def test_each_click_says_whether_you_agreed_with_the_careful_labeler(tmp_path, pairs):
    session = LabelingSession(pairs, tmp_path / "j.jsonl")
    widget = labeling_widget(session)
    verdict_line = widget.children[3]
    first = session.current()
    agreeing = {"a": "A is better", "b": "B is better", "tie": "Tie"}[session.reference_choice(first)]
    _buttons(widget)[agreeing].click()
    assert "you agree" in verdict_line.value
    second = session.reference_choice(session.current())
    _buttons(widget)["B is better" if second == "a" else "A is better"].click()
    assert "you disagree" in verdict_line.value
    _buttons(widget)["Skip"].click()
    assert "Skipped" in verdict_line.value
    assert verdict(session.judgments[first["pair_id"]]).endswith("you agree.")


def test_agreement_and_preferences(tmp_path, pairs):
    session = LabelingSession(pairs, tmp_path / "j.jsonl")
    for pair in pairs[:5]:
        session.record(session.reference_choice(pair) if session.reference_choice(pair) != "tie" else "a")
    session.record("skip")
    assert session.agreement() >= 0.8
    rows = session.preferences()
    assert len(rows) == 5 and all({"prompt", "chosen", "rejected"} <= set(r) for r in rows)


def test_torn_last_line_is_dropped_but_a_broken_middle_line_is_an_error(tmp_path, pairs):
    path = tmp_path / "j.jsonl"
    session = LabelingSession(pairs, path)
    session.record("a")
    session.record("b")
    good = path.read_text()
    path.write_text(good + '{"pair_id": "x", "cho')  # crash while writing the third judgment
    assert len(LabelingSession(pairs, path).judgments) == 2
    path.write_text('{"oops": 1}\n' + good)
    with pytest.raises(DataFileError, match=r"j.jsonl, line 1"):
        LabelingSession(pairs, path)


def test_bad_choice_is_refused_and_nothing_written(tmp_path, pairs):
    path = tmp_path / "j.jsonl"
    session = LabelingSession(pairs, path)
    with pytest.raises(ValueError, match="choice must be one of"):
        session.record("left")
    assert not path.exists()


@pytest.mark.parametrize("tail", ['{"pair_id": "x", "cho', "\u00e9t\u00e9 {", '{"pair_id": 1}'])
def test_a_judgment_after_a_torn_line_keeps_the_file_readable(tmp_path, pairs, tail):
    """A crash (or a full disk) mid-write leaves a fragment: the next judgment must not be glued onto it."""
    path = tmp_path / "j.jsonl"
    session = LabelingSession(pairs, path)
    session.record("a")
    path.write_text(path.read_text() + tail)
    resumed = LabelingSession(pairs, path)
    resumed.record("b")
    assert len(LabelingSession(pairs, path).judgments) == 2  # both judgments, and the file opens again
    assert (tmp_path / "j.jsonl.torn").read_text() == tail + "\n"  # the fragment is kept aside


def test_a_last_judgment_without_its_newline_is_kept_and_the_next_appended_after_it(tmp_path, pairs):
    path = tmp_path / "j.jsonl"
    session = LabelingSession(pairs, path)
    session.record("a")
    session.record("tie")
    path.write_text(path.read_text().rstrip("\n"))  # an editor that drops the final newline
    resumed = LabelingSession(pairs, path)
    assert len(resumed.judgments) == 2
    resumed.record("b")
    assert len(LabelingSession(pairs, path).judgments) == 3
    assert not (tmp_path / "j.jsonl.torn").exists()


def test_a_file_that_is_only_a_fragment_is_set_aside(tmp_path, pairs):
    path = tmp_path / "j.jsonl"
    path.write_text('{"pair_')
    LabelingSession(pairs, path).record("a")
    assert len(LabelingSession(pairs, path).judgments) == 1
    assert (tmp_path / "j.jsonl.torn").read_text() == '{"pair_\n'
