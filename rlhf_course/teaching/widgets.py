"""Interactive widgets for the lessons and for live teaching. Each is built by a function here; the
notebook only displays it.

The logic lives in plain classes (``LabelingSession``, ``SamplingExplorer``, ``TrainingDashboard``,
``RunComparison``) so it is tested without a browser; the widget functions only wire controls to that logic.
Font sizes are large enough for a projector.
"""

from __future__ import annotations

import html
import io
import json
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from rlhf_course.core.chat import encode
from rlhf_course.core.language_model import generate, sampling_logits
from rlhf_course.simulation import feedback, human
from rlhf_course.simulation.data import CHOICES, DataFileError
from rlhf_course.teaching import plots

BIG = "font-size:1.25em; line-height:1.5"  # readable from the back of a classroom


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


@dataclass
class Sample:
    tokens: list[str]  # the reply, one decoded token each (the last may be the end of sequence)
    probs: list[float]  # each token's probability under the distribution it was drawn from
    model_probs: list[float]  # the same token's probability under the model itself (temperature 1, no filter)


class SamplingExplorer:
    """Samples replies to one prompt with a given temperature, top-k and top-p, and the probability of every
    sampled token. ``chat`` wraps the prompt in the chat template (instruction-tuned models); without it the
    text is continued as it is (the base model)."""

    def __init__(
        self,
        model,
        tokenizer,
        prompt: str,
        chat: bool = False,
        temperature: float = 0.8,
        top_k: int = 0,
        top_p: float = 1.0,
        n: int = 4,
        seed: int = 0,
        max_new_tokens: int = 24,
    ):
        self.model, self.tokenizer, self.prompt, self.chat = model, tokenizer, prompt, chat
        self.temperature, self.top_k, self.top_p, self.n, self.seed = temperature, top_k, top_p, n, seed
        self.max_new_tokens = max_new_tokens

    def prompt_ids(self) -> list[int]:
        if self.chat:
            return encode(self.tokenizer, [{"role": "user", "content": self.prompt}])[0]
        return self.tokenizer(self.prompt)["input_ids"]

    def _probs(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sampling, model) probabilities from logits (..., vocab); greedy puts all mass on the argmax."""
        model = torch.softmax(logits.float(), dim=-1)
        if self.temperature == 0:
            return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float(), model
        return torch.softmax(sampling_logits(logits.float(), self.temperature, self.top_p, self.top_k), dim=-1), model

    @torch.no_grad()
    def next_token_table(self, k: int = 8) -> list[tuple[str, float, float]]:
        """The model's ``k`` likeliest first tokens: (token, model probability, sampling probability)."""
        dev = next(self.model.parameters()).device
        logits = self.model(input_ids=torch.tensor([self.prompt_ids()], device=dev)).logits[0, -1]  # (vocab,)
        sampling, model = self._probs(logits)
        top = model.topk(k).indices.tolist()
        return [(self.tokenizer.decode([t]), model[t].item(), sampling[t].item()) for t in top]

    @torch.no_grad()
    def sample(self) -> list[Sample]:
        tok, ids = self.tokenizer, self.prompt_ids()
        sequences, response_mask = generate(
            self.model,
            [ids] * self.n,
            pad_id=tok.pad_token_id,
            eos_id=tok.eos_token_id,
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=self.seed,
        )  # (n, prompt + new) each
        attention = response_mask.clone()
        attention[:, : len(ids)] = 1  # one prompt for every row: no left padding
        logits = self.model(input_ids=sequences, attention_mask=attention).logits[:, :-1]  # predicts tokens 1..
        sampling, model = self._probs(logits)  # (n, seq - 1, vocab) each
        target = sequences[:, 1:].unsqueeze(-1)  # (n, seq - 1, 1)
        p_sampling = sampling.gather(-1, target).squeeze(-1)  # (n, seq - 1)
        p_model = model.gather(-1, target).squeeze(-1)
        keep = response_mask[:, 1:].bool()  # (n, seq - 1)
        return [
            Sample(
                [tok.decode([t]) for t in sequences[i, 1:][keep[i]].tolist()],
                p_sampling[i][keep[i]].tolist(),
                p_model[i][keep[i]].tolist(),
            )
            for i in range(self.n)
        ]


def _token_box(text: str, p: float, p_model: float) -> str:
    shown = html.escape(text).replace(" ", "&nbsp;") or "&#8203;"
    return (
        f"<span title='model {p_model:.3f}' style='display:inline-block; text-align:center; margin:1px; "
        f"padding:0 2px; background:rgba(31,119,180,{0.1 + 0.6 * p:.2f}); border-radius:3px'>"
        f"<span style='font-family:monospace'>{shown}</span><br><small>{p:.2f}</small></span>"
    )


def render_samples(samples: list[Sample], eos_token: str) -> str:
    """Each sample as a row of token boxes shaded by the probability they were drawn with."""
    rows = []
    for s in samples:
        boxes = "".join(
            _token_box("⏎" if t == eos_token else t, p, q) for t, p, q in zip(s.tokens, s.probs, s.model_probs)
        )
        rows.append(f"<div style='{BIG}; margin-bottom:4px'>{boxes}</div>")
    return "".join(rows)


def render_next_token_table(rows: list[tuple[str, float, float]]) -> str:
    cells = "".join(
        f"<tr><td style='font-family:monospace'>{html.escape(t) or '&#8203;'}</td><td>{p:.3f}</td><td>{q:.3f}</td></tr>"
        for t, p, q in rows
    )
    return (
        f"<table style='{BIG}'><tr><th>next token</th><th>model</th><th>after temperature and filters</th></tr>"
        f"{cells}</table>"
    )


def sampling_explorer(explorer: SamplingExplorer):
    """Prompt box, temperature, top-k, top-p and sample-count sliders, and a button for fresh samples; shows the
    first token's distribution before and after the settings, and the samples token by token."""
    import ipywidgets as w

    style = {"description_width": "100px"}
    prompt = w.Text(
        value=explorer.prompt,
        description="prompt",
        continuous_update=False,
        style=style,
        layout=w.Layout(width="600px"),
    )
    temperature = w.FloatSlider(
        value=explorer.temperature,
        min=0.0,
        max=2.0,
        step=0.05,
        description="temperature",
        continuous_update=False,
        style=style,
    )
    top_k = w.IntSlider(
        value=explorer.top_k, min=0, max=50, description="top-k (0 off)", continuous_update=False, style=style
    )
    top_p = w.FloatSlider(
        value=explorer.top_p, min=0.05, max=1.0, step=0.05, description="top-p", continuous_update=False, style=style
    )
    n = w.IntSlider(value=explorer.n, min=1, max=8, description="samples", continuous_update=False, style=style)
    again = w.Button(description="New samples", button_style="info", layout=w.Layout(width="150px", height="40px"))
    table, shown = w.HTML(), w.HTML()

    def refresh(_=None):
        explorer.prompt, explorer.temperature, explorer.top_k = prompt.value, temperature.value, top_k.value
        explorer.top_p, explorer.n = top_p.value, n.value
        table.value = render_next_token_table(explorer.next_token_table())
        shown.value = render_samples(explorer.sample(), explorer.tokenizer.eos_token)

    def new_seed(_):
        explorer.seed += 1
        refresh()

    for control in (prompt, temperature, top_k, top_p, n):
        control.observe(refresh, names="value")
    again.on_click(new_seed)
    refresh()
    return w.VBox([prompt, w.HBox([w.VBox([temperature, top_k, top_p, n, again]), table]), shown])


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where figures can be redrawn in place)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


class TrainingDashboard:
    """Curves of a run that grow while it trains: pass the dashboard as a trainer's (or ``pipeline.run``'s)
    ``on_step`` and use it in a ``with`` block.

    In a notebook the figure is redrawn in place, at most every ``redraw_seconds`` and once more at the end,
    so the saved notebook shows the whole run. Elsewhere it prints a line every ``print_every`` steps and a
    summary at the end. Metrics a row lacks (a validation accuracy measured now and then) are drawn as points.
    """

    def __init__(
        self,
        keys=("loss",),
        title: str = "",
        live: bool | None = None,
        redraw_seconds: float = 2.0,
        print_every: int = 50,
        window: int = 20,
        stream=None,
    ):
        self.keys, self.title, self.window = tuple(keys), title, window
        self.live = in_notebook() if live is None else live
        self.redraw_seconds, self.print_every = redraw_seconds, print_every
        self.stream = stream or sys.stdout
        self.rows: list[dict] = []
        self._handle, self._last_draw = None, float("-inf")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __call__(self, row: dict) -> None:
        self.rows.append(row)
        if self.live:
            if time.monotonic() - self._last_draw >= self.redraw_seconds:
                self.draw()
        elif len(self.rows) % self.print_every == 0:
            print(self.line(), file=self.stream, flush=True)

    def recent(self, key: str) -> float | None:
        """Mean of ``key`` over the last ``window`` rows that have it."""
        values = [row[key] for row in self.rows if key in row][-self.window :]
        return sum(values) / len(values) if values else None

    def line(self) -> str:
        step = len(self.rows) - 1
        parts = [f"{k} {v:.3f}" for k in self.keys if (v := self.recent(k)) is not None]
        return f"{self.title + ' ' if self.title else ''}step {step}: " + ", ".join(parts)

    def figure(self):
        return plots.training_curves(self.rows, title=self.title, keys=self.keys, window=self.window)

    def draw(self) -> None:
        from IPython.display import display

        if not self.rows:
            return
        fig = self.figure()
        if self._handle is None:
            self._handle = display(fig, display_id=True)
        else:
            self._handle.update(fig)
        plt.close(fig)  # shown through the handle only, not again when the cell ends
        self._last_draw = time.monotonic()

    def close(self) -> None:
        if self.live:
            self.draw()
        elif self.rows:
            print(
                self.line() + f" (mean of the last {self.window} steps; {len(self.rows)} in all)",
                file=self.stream,
                flush=True,
            )


class RunComparison:
    """Several training runs (a sweep of the KL coefficient, say), any subset of them shown side by side."""

    def __init__(self, runs: dict, keys=("score", "gold", "kl"), last: int = 5):
        if not runs:
            raise ValueError("need at least one run to compare")
        self.runs, self.keys, self.last = runs, tuple(keys), last
        self.shown = list(runs)
        self.colors = {label: f"C{i}" for i, label in enumerate(runs)}  # a run keeps its colour when others hide

    def table(self) -> list[dict]:
        """Per shown run: each metric's mean over its last ``last`` updates."""
        tails = {label: self.runs[label][-self.last :] for label in self.shown}
        return [
            {"run": label, **{k: sum(r[k] for r in tail) / len(tail) for k in self.keys}}
            for label, tail in tails.items()
        ]

    def figure(self):
        return plots.compare_runs({label: self.runs[label] for label in self.shown}, self.keys, colors=self.colors)


def kl_explorer(comparison: RunComparison, label: str = "KL coefficient"):
    """A check box per run, its curves side by side and a table of where each run ended."""
    import ipywidgets as w

    boxes = {
        run: w.Checkbox(value=run in comparison.shown, description=f"{label} {run}", indent=False)
        for run in comparison.runs
    }
    image, table = w.Image(format="png"), w.HTML()

    def refresh(_=None):
        comparison.shown = [run for run, box in boxes.items() if box.value]
        fig = comparison.figure()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=90)
        plt.close(fig)
        image.value = buffer.getvalue()
        head = "".join(f"<th>{html.escape(plots.CURVE_LABELS.get(k, k))}</th>" for k in comparison.keys)
        rows = "".join(
            f"<tr><td>{html.escape(label)} {html.escape(str(r['run']))}</td>"
            + "".join(f"<td>{r[k]:.3f}</td>" for k in comparison.keys)
            + "</tr>"
            for r in comparison.table()
        )
        table.value = f"<table style='{BIG}'><tr><th>last {comparison.last} updates</th>{head}</tr>{rows}</table>"

    for box in boxes.values():
        box.observe(refresh, names="value")
    refresh()
    return w.VBox([w.HBox(list(boxes.values())), image, table])
