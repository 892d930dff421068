"""The world's data as Hugging Face datasets in TRL's formats, saved and loaded as JSONL.

* SFT: conversational prompt/completion, ``{"prompt": [messages], "completion": [assistant message]}``
  (what TRL's SFTTrainer takes), plus ``family``, ``answer`` and ``key`` columns for evaluation.
* Preferences: ``{"prompt": [...], "chosen": [...], "rejected": [...]}`` with an optional ``margin``
  (what TRL's RewardTrainer and DPOTrainer take).

JSONL loading checks every line and names the file and line of the first problem.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset

from rlhf_course.simulation import world


class DataFileError(ValueError):
    """A data file that is not what the course expects; the message names the file and line."""


@dataclass
class DataConfig:
    train_per_family: int = 800
    eval_per_family: int = 60
    seed: int = 0
    demo_mix: world.DemoMix = world.DemoMix()


def task_from_row(row: dict) -> world.Task:
    return world.Task(row["family"], tuple(row["prompt"]), row["answer"], row["key"])


def sft_dataset(split: str, config: DataConfig = DataConfig()) -> Dataset:
    """Demonstrations for ``split``: every task once, answered in a style drawn from the demo mix."""
    per_family = config.train_per_family if split == "train" else config.eval_per_family
    rng = random.Random(f"demos:{config.seed}:{split}")
    rows = []
    for task in world.generate_tasks(split, per_family, config.seed):
        reply = world.demonstration(task, rng, config.demo_mix)
        rows.append(
            {
                "prompt": task.prompt,
                "completion": [{"role": "assistant", "content": reply}],
                "family": task.family,
                "answer": task.answer,
                "key": task.key,
            }
        )
    return Dataset.from_list(rows)


# --- JSONL ------------------------------------------------------------------------------------
CHOICES = ("a", "b", "tie", "skip")  # what a labeler can answer when shown responses a and b

# field -> what it must hold: "messages" (a non-empty list of chat messages), "text" (a non-empty
# string), "texts" (a non-empty list of strings), "numbers" (a non-empty list of numbers), "task" (a task
# record) or a tuple of the allowed values
SCHEMAS = {
    "sft": {"prompt": "messages", "completion": "messages"},
    "preference": {"prompt": "messages", "chosen": "messages", "rejected": "messages"},
    "judgment": {"task": "task", "a": "text", "b": "text", "labeler": "text", "choice": CHOICES},
    "samples": {"task": "task", "responses": "texts", "scores": "numbers"},  # best-of-n's scored samples
}


def _check_messages(messages, field, where):
    if not isinstance(messages, list) or not messages:
        raise DataFileError(f"{where}: field {field!r} should be a non-empty list of messages")
    for m in messages:
        if not (
            isinstance(m, dict)
            and m.get("role") in ("system", "user", "assistant")
            and isinstance(m.get("content"), str)
        ):
            raise DataFileError(
                f"{where}: field {field!r} should be a list of {{'role', 'content'}} "
                f"messages with role system/user/assistant, got {m!r}"
            )
        if field != "prompt" and not m["content"].strip():
            raise DataFileError(f"{where}: field {field!r} has an empty response")


def validate_row(row, schema: str, where: str) -> None:
    if not isinstance(row, dict):
        raise DataFileError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for name, kind in SCHEMAS[schema].items():
        if name not in row:
            raise DataFileError(f"{where}: missing field {name!r} (a {schema} row needs {sorted(SCHEMAS[schema])})")
        value = row[name]
        if kind == "messages":
            _check_messages(value, name, where)
        elif kind == "text" and not (isinstance(value, str) and value.strip()):
            raise DataFileError(f"{where}: field {name!r} should be a non-empty string, got {value!r}")
        elif kind == "texts" and not (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
            raise DataFileError(f"{where}: field {name!r} should be a non-empty list of strings")
        elif kind == "numbers" and not (
            isinstance(value, list)
            and value
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        ):
            raise DataFileError(f"{where}: field {name!r} should be a non-empty list of numbers")
        elif kind == "task" and not (isinstance(value, dict) and {"family", "prompt", "answer", "key"} <= set(value)):
            raise DataFileError(f"{where}: field {name!r} should be a task record with family, prompt, answer, key")
        elif isinstance(kind, tuple) and value not in kind:
            raise DataFileError(f"{where}: unknown label {value!r} in field {name!r}; expected one of {kind}")


def save_jsonl(dataset: Dataset | list[dict], path: str | Path) -> Path:
    """Write rows to ``path`` atomically: a crash mid-write leaves the old file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w") as f:
        for row in dataset:
            f.write(json.dumps(row) + "\n")
    tmp.replace(path)
    return path


def load_jsonl(path: str | Path, schema: str | None = None) -> Dataset:
    """Read a JSONL file into a Dataset, validating each line against ``schema`` (a key of ``SCHEMAS``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No data file at {path}")
    rows = []
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            where = f"{path}, line {number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataFileError(
                    f"{where}: not UTF-8 text (byte {err.start + 1} of the line); is this a JSONL file?"
                ) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataFileError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
            if schema is not None:
                validate_row(row, schema, where)
            rows.append(row)
    if not rows:
        raise DataFileError(f"{path}: the file has no rows")
    return Dataset.from_list(rows)
