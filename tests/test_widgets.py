"""The live-teaching widgets, driven without a browser: setting a control's value fires its observers and
Button.click() runs its handlers (ipywidgets' dummy comm), so each callback is checked on the state it leaves."""

import io

import pytest

from rlhf_course.core import models
from rlhf_course.teaching import plots
from rlhf_course.teaching.dashboard import TrainingDashboard
from rlhf_course.teaching.kl_explorer import RunComparison, kl_explorer
from rlhf_course.teaching.sampling_explorer import SamplingExplorer, sampling_explorer


@pytest.fixture(scope="module")
def base():
    return models.load_model(), models.load_tokenizer()


def _controls(widget):
    prompt, (left, table), shown = widget.children[0], widget.children[1].children, widget.children[2]
    temperature, top_k, top_p, n, again = left.children
    return prompt, temperature, top_k, top_p, n, again, table, shown


def test_sampling_probabilities_follow_temperature_and_filters(base):
    model, tok = base
    explorer = SamplingExplorer(model, tok, "Nora lives in", n=4, max_new_tokens=8)
    explorer.temperature = 0.0
    greedy = explorer.sample()
    assert all(s.tokens == greedy[0].tokens for s in greedy)
    assert all(p == 1.0 for s in greedy for p in s.probs)  # greedy draws its token for sure

    explorer.temperature, explorer.top_k = 1.0, 1
    assert [s.tokens for s in explorer.sample()] == [s.tokens for s in greedy]  # top-1 is greedy
    explorer.top_k, explorer.top_p = 0, 1.0
    free = explorer.sample()
    for s in free:  # temperature 1 without filters samples from the model itself
        assert s.probs == pytest.approx(s.model_probs, abs=1e-5) and len(s.tokens) == len(s.probs) > 0

    explorer.top_k = 3
    table = explorer.next_token_table(k=8)
    assert sum(q > 0 for _, _, q in table) == 3 and sum(q for _, _, q in table) == pytest.approx(1.0, abs=1e-5)
    assert [p for _, p, _ in table] == sorted((p for _, p, _ in table), reverse=True)
    explorer.top_k, explorer.temperature = 0, 0.5  # a lower temperature sharpens: the favourite gains mass
    sharp = explorer.next_token_table(k=1)[0]
    assert sharp[2] > sharp[1]


def test_sampling_explorer_controls_resample(base):
    model, tok = base
    explorer = SamplingExplorer(model, tok, "The Zorbish word for", n=3, max_new_tokens=6, temperature=1.0)
    prompt, temperature, top_k, top_p, n, again, table, shown = _controls(sampling_explorer(explorer))
    assert shown.value.count("<div") == 3 and "next token" in table.value
    before = shown.value
    again.click()
    assert explorer.seed == 1 and shown.value != before
    n.value = 5
    assert explorer.n == 5 and shown.value.count("<div") == 5
    temperature.value = 0.0
    assert explorer.temperature == 0.0 and shown.value.count("<small>1.00</small>") > 0
    top_k.value = 2
    assert explorer.top_k == 2
    top_p.value = 0.5
    assert explorer.top_p == 0.5
    prompt.value = "Nora lives in"
    assert explorer.prompt == "Nora lives in" and "Zorbish" not in shown.value


def test_chat_prompt_uses_the_chat_template(base):
    model, tok = base
    explorer = SamplingExplorer(model, tok, "Say hi.", chat=True, n=1, max_new_tokens=2)
    plain = SamplingExplorer(model, tok, "Say hi.", n=1, max_new_tokens=2)
    assert len(explorer.prompt_ids()) > len(plain.prompt_ids())
    assert tok.decode(explorer.prompt_ids()).count("Say hi.") == 1


def test_dashboard_prints_a_summary_outside_a_notebook():
    out = io.StringIO()
    with TrainingDashboard(("loss", "val_accuracy"), title="reward", print_every=10, window=5, stream=out) as dashboard:
        assert not dashboard.live  # pytest is not a notebook
        for step in range(25):
            row = {"step": step, "loss": 1.0 - step / 100}
            if step % 10 == 9:
                row["val_accuracy"] = 0.5 + step / 100
            dashboard(row)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3  # steps 10 and 20, then the summary
    assert lines[0].startswith("reward step 9: loss 0.930, val_accuracy 0.590")
    assert "25 in all" in lines[-1] and "loss 0.780" in lines[-1] and "val_accuracy 0.640" in lines[-1]


def test_dashboard_redraws_in_place_in_a_notebook(monkeypatch):
    shown = []

    class Handle:
        def update(self, fig):
            shown.append(("update", [len(ax.lines[-1].get_xdata()) for ax in fig.axes]))

    def display(fig, display_id):
        shown.append(("display", [len(ax.lines[-1].get_xdata()) for ax in fig.axes]))
        return Handle()

    monkeypatch.setattr("IPython.display.display", display)
    with TrainingDashboard(("loss", "kl"), live=True, redraw_seconds=3600) as dashboard:
        for step in range(7):
            dashboard({"update": step, "loss": 1.0 / (step + 1), "kl": step / 10})
    # drawn at the first row (nothing shown yet), not again within the hour, and once more at the end
    assert shown == [("display", [1, 1]), ("update", [7, 7])]


def test_reward_model_rows_draw_sparse_validation_points():
    rows = [{"step": s, "loss": 0.7} | ({"val_accuracy": 0.6} if s % 4 == 3 else {}) for s in range(12)]
    fig = plots.training_curves(rows, keys=("loss", "val_accuracy"))
    assert list(fig.axes[1].lines[0].get_xdata()) == [3, 7, 11]
    assert len(fig.axes[0].lines[-1].get_xdata()) == 12


def _runs():
    return {
        beta: [{"update": u, "score": 0.1 * u * (1 - beta), "gold": 0.5, "kl": u * (1 - beta)} for u in range(10)]
        for beta in (0.0, 0.1, 0.5)
    }


def test_run_comparison_table_and_colours():
    comparison = RunComparison(_runs())
    table = {row["run"]: row for row in comparison.table()}
    assert table[0.0]["kl"] == pytest.approx(7.0) and table[0.5]["kl"] == pytest.approx(3.5)
    comparison.shown = [0.5]
    fig = comparison.figure()
    assert [line.get_color() for line in fig.axes[0].lines] == ["C2"]  # 0.5 keeps its colour when alone
    with pytest.raises(ValueError, match="at least one run"):
        RunComparison({})


def test_kl_explorer_check_boxes_hide_and_show_runs():
    comparison = RunComparison(_runs())
    widget = kl_explorer(comparison, label="β =")
    boxes, image, table = widget.children[0].children, widget.children[1], widget.children[2]
    assert table.value.count("<tr>") == 4 and image.value[:4] == b"\x89PNG"
    first_image = image.value
    boxes[1].value = False
    assert comparison.shown == [0.0, 0.5] and table.value.count("<tr>") == 3 and image.value != first_image
    boxes[0].value = boxes[2].value = False
    assert comparison.shown == [] and table.value.count("<tr>") == 1
    boxes[2].value = True
    assert comparison.shown == [0.5] and "β = 0.5" in table.value


def test_trainers_hand_rows_to_on_step(base):
    from rlhf_course.algorithms import sft
    from rlhf_course.simulation import data

    model, tok = models.load_model(), base[1]
    rows = []
    sft.train_sft(
        model,
        tok,
        data.sft_dataset("train").select(range(16)),
        sft.SFTConfig(epochs=1, batch_size=8),
        on_step=rows.append,
    )
    assert [r["step"] for r in rows] == [0, 1] and all(isinstance(r["loss"], float) for r in rows)
