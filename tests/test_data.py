import json

import pytest

from rlhf_course.simulation import data


@pytest.fixture(scope="module")
def sft():
    return data.sft_dataset("validation", data.DataConfig(eval_per_family=10))


def test_sft_dataset_is_in_trl_conversational_format(sft):
    row = sft[0]
    assert row["prompt"][-1]["role"] == "user"
    assert row["completion"] == [{"role": "assistant", "content": row["completion"][0]["content"]}]
    assert {"family", "answer", "key"} <= set(sft.column_names)


def test_demonstrations_mix_styles_and_errors():
    ds = data.sft_dataset("train", data.DataConfig(train_per_family=100))
    replies = [r["completion"][0]["content"] for r in ds]
    assert any(r.startswith("Sure! ") for r in replies)
    assert any(r.startswith("Good question") for r in replies)
    wrong = sum(not data.world.is_correct(data.task_from_row(r), r["completion"][0]["content"]) for r in ds)
    assert 0.08 < wrong / len(ds) < 0.22


def test_jsonl_round_trip(tmp_path, sft):
    path = data.save_jsonl(sft, tmp_path / "sft.jsonl")
    assert list(data.load_jsonl(path, "sft")) == list(sft)


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "not valid JSON"),
        ('{"prompt": [{"role": "user", "content": "hi"}]}', "missing field 'completion'"),
        (
            '{"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "assistant", "content": " "}]}',
            "empty response",
        ),
        (
            '{"prompt": [{"role": "robot", "content": "hi"}], "completion": [{"role": "assistant", "content": "x"}]}',
            "role system/user/assistant",
        ),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_malformed_jsonl_names_file_and_line(tmp_path, line, message):
    good = json.dumps(
        {"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "assistant", "content": "hello"}]}
    )
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{good}\n\n{line}\n{good}\n")
    with pytest.raises(data.DataFileError) as err:
        data.load_jsonl(path, "sft")
    assert f"{path}, line 3" in str(err.value) and message in str(err.value)


def test_failed_save_keeps_the_old_file(tmp_path, sft):
    path = data.save_jsonl(sft, tmp_path / "sft.jsonl")
    before = path.read_text()

    def broken_rows():
        yield sft[0]
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        data.save_jsonl(broken_rows(), path)
    assert path.read_text() == before


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="No data file"):
        data.load_jsonl(tmp_path / "nope.jsonl")


JUDGMENT = {
    "task": {"family": "arithmetic", "prompt": [{"role": "user", "content": "1+1?"}], "answer": "2", "key": "1+1"},
    "a": "2",
    "b": "3",
    "labeler": "expert",
    "choice": "a",
}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"choice": "maybe"}, "unknown label 'maybe'"),
        ({"b": ""}, "field 'b' should be a non-empty string"),
        ({"task": {"family": "arithmetic"}}, "should be a task record"),
        ({"chosen": None}, None),  # an extra field is allowed
    ],
)
def test_judgment_files_are_checked_line_by_line(tmp_path, change, message):
    path = tmp_path / "judgments.jsonl"
    path.write_text(json.dumps(JUDGMENT) + "\n" + json.dumps({**JUDGMENT, **change}) + "\n")
    if message is None:
        assert len(data.load_jsonl(path, "judgment")) == 2
        return
    with pytest.raises(data.DataFileError) as err:
        data.load_jsonl(path, "judgment")
    assert f"{path}, line 2" in str(err.value) and message in str(err.value)


def test_missing_judgment_field_is_named(tmp_path):
    path = tmp_path / "judgments.jsonl"
    path.write_text(json.dumps({k: v for k, v in JUDGMENT.items() if k != "labeler"}) + "\n")
    with pytest.raises(data.DataFileError, match="line 1: missing field 'labeler'"):
        data.load_jsonl(path, "judgment")


def test_best_of_n_samples_round_trip_and_bad_rows_are_named(tmp_path):
    import torch

    from rlhf_course.algorithms import best_of_n
    from rlhf_course.simulation import world

    tasks = world.generate_tasks("test", 1)[:2]
    responses = [["a", "b", "c"], ["d", "e", "f"]]
    path = best_of_n.save_samples(
        tasks, responses, torch.tensor([[0.5, -1.0, 2.0], [0.0, 1.0, 3.0]]), tmp_path / "samples.jsonl"
    )
    loaded_tasks, loaded, scores = best_of_n.load_samples(path)
    assert loaded_tasks == tasks and loaded == responses and scores[0, 2].item() == 2.0
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text(json.dumps(rows[0]) + "\n" + json.dumps({**rows[1], "scores": [1.0, 2.0]}) + "\n")
    with pytest.raises(data.DataFileError, match="row 2: expected 3 responses and 3 scores, got 3 and 2"):
        best_of_n.load_samples(path)
    path.write_text(json.dumps({**rows[0], "scores": ["high", 1.0, 2.0]}) + "\n")
    with pytest.raises(data.DataFileError, match="line 1: field 'scores' should be a non-empty list of numbers"):
        best_of_n.load_samples(path)
