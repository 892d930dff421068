"""Labeling pairs by hand, in class: a session that saves every judgment as it is made, and its widget.

``LabelingSession`` holds the logic (resuming, mending a file cut off mid-line, agreement with a simulated
labeler) and is tested without a browser; ``labeling_widget`` only wires buttons to it.
"""

from __future__ import annotations

import html
import json
import os
import random
from pathlib import Path

from rlhf_course.simulation import feedback, human
from rlhf_course.simulation.data import CHOICES, DataFileError
from rlhf_course.teaching.style import BIG


class LabelingSession:
    """Judge pairs one at a time; every judgment is appended to ``path`` the moment it is made.

    ``pairs`` are dicts with ``pair_id``, ``task`` (a task record), ``a`` and ``b``. A session opened on
    an existing file resumes after the judgments already there, so a crash or a closed tab loses at
    most the judgment being written. ``reference`` is the simulated human the learner is compared with.
    """

    def __init__(
        self, pairs: list[dict], path: str | Path, reference: human.SimulatedHuman = human.CAREFUL, labeler: str = "you"
    ):
        ids = [p["pair_id"] for p in pairs]
        if len(set(ids)) != len(ids):
            raise ValueError("pair_id values must be unique")
        self.pairs, self.path, self.reference, self.labeler = pairs, Path(path), reference, labeler
        self.judgments = self._load()

    def _load(self) -> dict[str, dict]:
        done = {}
        if not self.path.is_file():
            return done
        try:
            text = self.path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataFileError(
                f"{self.path}: not a judgments file (byte {err.start + 1} is not UTF-8 text); "
                "pass another path, or move this file away to start afresh"
            ) from None
        lines = text.split("\n")
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            torn_last = number == len(lines) and not text.endswith("\n")
            try:
                row = json.loads(line)
                if row.get("choice") not in CHOICES or "pair_id" not in row:
                    raise ValueError(f"expected a pair_id and a choice in {CHOICES}")
            except ValueError as err:
                if torn_last:  # a write cut off by a crash: that judgment was never completed
                    break
                raise DataFileError(f"{self.path}, line {number}: not a judgment ({err})") from None
            done[row["pair_id"]] = row
        return done

    def _mend_tail(self) -> None:
        """Make the file end with a complete line before anything is appended to it.

        A crash or a full disk in the middle of a write leaves a fragment after the last newline; appending to
        it would glue the next judgment onto it and make the file unreadable. A complete judgment without its
        newline (a hand edit) gets one; a fragment moves to ``NAME.torn`` (kept, never glued to).
        """
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return
        data = self.path.read_bytes()
        if data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1  # 0 when the fragment is the whole file
        tail = data[cut:]
        try:
            complete = json.loads(tail).get("choice") in CHOICES
        except (ValueError, AttributeError):
            complete = False
        if complete:
            with self.path.open("ab") as f:
                f.write(b"\n")
            return
        with self.path.with_name(self.path.name + ".torn").open("ab") as aside:
            aside.write(tail + b"\n")
        with self.path.open("r+b") as f:
            f.truncate(cut)

    @property
    def remaining(self) -> list[dict]:
        return [p for p in self.pairs if p["pair_id"] not in self.judgments]

    def current(self) -> dict | None:
        remaining = self.remaining
        return remaining[0] if remaining else None

    def reference_choice(self, pair: dict) -> str:
        """What the simulated human prefers, without noise: the higher utility, or a tie."""
        task = feedback.task_of(pair["task"])
        diff = self.reference.utility(task, pair["a"]) - self.reference.utility(task, pair["b"])
        return "a" if diff > 1e-9 else "b" if diff < -1e-9 else "tie"

    def record(self, choice: str) -> dict:
        """Judge the current pair and append the judgment to the file at once."""
        if choice not in CHOICES:
            raise ValueError(f"choice must be one of {CHOICES}, got {choice!r}")
        pair = self.current()
        if pair is None:
            raise RuntimeError("every pair is already judged")
        row = {
            "pair_id": pair["pair_id"],
            "task": pair["task"],
            "a": pair["a"],
            "b": pair["b"],
            "labeler": self.labeler,
            "choice": choice,
            "reference_choice": self.reference_choice(pair),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._mend_tail()
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.judgments[row["pair_id"]] = row
        return row

    def agreement(self) -> float | None:
        """Share of your a/b judgments that match the simulated human's (None before any)."""
        decided = [j for j in self.judgments.values() if j["choice"] in ("a", "b")]
        if not decided:
            return None
        return sum(j["choice"] == j["reference_choice"] for j in decided) / len(decided)

    def preferences(self) -> list[dict]:
        """Your a/b judgments as TRL preference rows (ties and skips carry no preference)."""
        return feedback.to_preferences([j for j in self.judgments.values() if j["choice"] in ("a", "b")])


def pairs_for_labeling(tasks, candidates, n: int, seed: int = 0) -> list[dict]:
    """Up to ``n`` pairs of distinct candidates, from different prompts, in a seeded order."""
    rng = random.Random(f"label:{seed}")
    pairs = []
    for task, replies in zip(tasks, candidates):
        distinct = list(dict.fromkeys(replies))
        if len(distinct) >= 2:
            a, b = rng.sample(distinct, 2)
            pairs.append({"pair_id": f"{task.key}|{a}|{b}", "task": feedback.task_record(task), "a": a, "b": b})
    rng.shuffle(pairs)
    return pairs[:n]


def verdict(row: dict) -> str:
    """One line on the judgment just made, next to the simulated careful labeler's."""
    names = {"a": "A", "b": "B", "tie": "a tie", "skip": "skip"}
    if row["choice"] == "skip":
        return "Skipped."
    agree = row["choice"] == row["reference_choice"]
    return f"You chose {names[row['choice']]}; the careful labeler prefers {names[row['reference_choice']]}: " + (
        "you agree." if agree else "you disagree."
    )


def labeling_widget(session: LabelingSession):
    """Prompt, two responses, four buttons, progress, agreement and a verdict on each judgment; an ipywidgets.VBox."""
    import ipywidgets as w

    prompt = w.HTML()
    responses = [w.HTML(layout=w.Layout(border="2px solid #999", padding="8px", width="48%")) for _ in range(2)]
    buttons = {
        c: w.Button(description=label, button_style=style, layout=w.Layout(width="150px", height="44px"))
        for c, label, style in zip(CHOICES, ("A is better", "B is better", "Tie", "Skip"), ("info", "info", "", ""))
    }
    bar = w.IntProgress(min=0, max=len(session.pairs))
    status = w.HTML()
    last = w.HTML()

    def show():
        pair = session.current()
        bar.value = len(session.pairs) - len(session.remaining)
        agreement = session.agreement()
        status.value = (
            f"<span style='{BIG}'>{bar.value} / {len(session.pairs)} judged"
            + ("" if agreement is None else f"; you agree with the simulated human on {agreement:.0%}")
            + "</span>"
        )
        if pair is None:
            prompt.value = (
                f"<div style='{BIG}'><b>All pairs judged.</b> Your judgments are saved in "
                f"{html.escape(str(session.path))}</div>"
            )
            for r in responses:
                r.value = ""
            for b in buttons.values():
                b.disabled = True
            return
        turns = "<br>".join(f"<b>{m['role']}:</b> {html.escape(m['content'])}" for m in pair["task"]["prompt"])
        prompt.value = f"<div style='{BIG}'>{turns}</div>"
        for r, name, text in zip(responses, "AB", (pair["a"], pair["b"])):
            r.value = f"<div style='{BIG}'><b>{name}</b><br>{html.escape(text)}</div>"

    def on_click(choice):
        def handler(_):
            row = session.record(choice)
            color = "#555" if choice == "skip" else "#1a7f37" if choice == row["reference_choice"] else "#b35900"
            last.value = f"<span style='{BIG}; color:{color}'>{html.escape(verdict(row))}</span>"
            show()

        return handler

    for choice, button in buttons.items():
        button.on_click(on_click(choice))
    show()
    return w.VBox([prompt, w.HBox(responses), w.HBox(list(buttons.values())), last, bar, status])
