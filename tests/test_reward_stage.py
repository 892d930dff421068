"""The reward stage end to end on a tiny configuration, its evaluation helpers, and the lesson cache."""

import json
import shutil

import pytest
import torch

from rlhf_course import checkpoints, model_cards, pipeline, report
from rlhf_course.algorithms import reward_model as rm
from rlhf_course.analysis import reward_evaluation
from rlhf_course.core import models
from rlhf_course.simulation import data, feedback, world

TINY = pipeline.PipelineConfig(
    data=data.DataConfig(train_per_family=10, eval_per_family=3),
    feedback=pipeline.FeedbackConfig(
        prompts_per_family=3,
        samples_per_prompt=3,
        test_samples_per_prompt=3,
        automatic_per_family=4,
        replay_per_family=2,
    ),
    reward=rm.RewardConfig(epochs=1, batch_size=8, eval_every=2),
)


@pytest.fixture(scope="module")
def stage_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    shutil.copytree(models.BASE_MODEL_DIR, out / "sft_model")  # stands in for an SFT model: same format
    pipeline.run(out, ["reward"], TINY)
    return out


def test_reward_stage_writes_the_promised_metrics_and_files(stage_dir):
    m = json.loads((stage_dir / "metrics.json").read_text())["reward"]
    for key in (
        "accuracy",
        "gold_accuracy",
        "noise_ceiling",
        "correctness_accuracy",
        "gold_spearman",
        "gold_spearman_within_prompt",
        "seconds",
    ):
        assert isinstance(m[key], float), key
    assert 0 <= m["gold_accuracy"] <= 1 and -1 <= m["gold_spearman"] <= 1
    assert m["train_comparisons"] == len(data.load_jsonl(stage_dir / "feedback" / "preferences.jsonl", "preference"))
    raw = data.load_jsonl(stage_dir / "feedback" / "comparisons_raw.jsonl", "judgment")
    assert len(raw) >= m["train_comparisons"]  # double-judged pairs appear twice in the raw file
    model = rm.load(stage_dir / "reward_model", dev=torch.device("cpu"))
    assert model.config.num_labels == 1 and model.config.reward_std > 0
    report.write(stage_dir, {"reward": m})
    assert (stage_dir / "reward_calibration.png").is_file() and "Reward model" in (stage_dir / "report.md").read_text()
    assert model_cards.write(stage_dir, {"reward": m}) == [stage_dir / "reward_model" / "README.md"]
    card = (stage_dir / "reward_model" / "README.md").read_text()
    gold_se = (m["gold_accuracy"] * (1 - m["gold_accuracy"]) / m["test_comparisons"]) ** 0.5
    assert f"| {m['gold_accuracy']:.3f} ± {gold_se:.3f} |" in card  # the run's figures, with their uncertainty
    assert f"{m['train_comparisons']:,} comparisons" in card
    for name, agreement in m["labeler_gold_agreement"].items():  # who labeled, and how reliably
        assert f"| {name} | {agreement:.2f} | {m['labeler_reliability_estimate'][name]:.2f} |" in card
    weakest = min(m["correctness_by_family"], key=m["correctness_by_family"].get)
    assert (weakest in card.split("## Known limitations")[1]) == (
        m["correctness_by_family"][weakest] < model_cards.WEAK
    )


def test_reward_stage_without_sft_model_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the 'sft' stage first"):
        pipeline.run(tmp_path, ["reward"], TINY)


def test_spearman_on_a_hand_example():
    assert reward_evaluation.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert reward_evaluation.spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    # ties share their average rank: ranks (1.5, 1.5, 3) against (1, 2, 3)
    assert reward_evaluation.spearman([5, 5, 7], [1, 2, 3]) == pytest.approx(0.8660254, abs=1e-6)


def test_calibration_and_disagreements_on_a_model_that_prefers_long_replies():
    class LengthReward(torch.nn.Module):  # reward = number of tokens: the longer reply always wins
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"reward_mean": 0.0, "reward_std": 1.0, "n_positions": 128})()
            self.w = torch.nn.Parameter(torch.zeros(()))

    tasks = world.generate_tasks("validation", 4)
    candidates = [
        [world.render(t, "curt"), world.render(t, "rambling"), world.render(t, "curt", t.wrong)] for t in tasks
    ]
    raw = feedback.judge_pairs(tasks, candidates, double_share=0.0)
    tok = models.load_tokenizer()
    original = rm.raw_rewards
    rm.raw_rewards = lambda model, ids, mask: mask.sum(dim=1).float()
    try:
        bins = reward_evaluation.calibration(LengthReward(), tok, raw)
        worst = reward_evaluation.disagreements(LengthReward(), tok, raw, k=100)
    finally:
        rm.raw_rewards = original
    assert sum(n for _, _, n in bins) == len(raw)
    assert worst and all((w["gold_a"] - w["gold_b"]) * (w["reward_a"] - w["reward_b"]) < 0 for w in worst)
    assert any("let me think" in w["a"] + w["b"] for w in worst)  # it rewards rambling the gold score dislikes


def test_prepared_builds_missing_stages_once_and_reuses_them(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHF_COURSE_CACHE", str(tmp_path))
    calls = []

    def fake_run(out, stages, config):
        calls.append(list(stages))
        out.mkdir(parents=True, exist_ok=True)
        metrics_path = out / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
        metrics.update({s: {} for s in stages})
        metrics_path.write_text(json.dumps(metrics))

    monkeypatch.setattr(pipeline, "run", fake_run)
    first = checkpoints.prepared(["sft"], TINY)
    again = checkpoints.prepared(["reward"], TINY)
    checkpoints.prepared(["sft", "reward"], TINY)
    assert first == again and calls == [["sft"], ["reward"]]
    checkpoints.prepared(["dpo", "best_of_n"], TINY)  # later stages need sft and reward only, not pg or ppo
    assert calls[-2:] == [["dpo"], ["best_of_n"]]
    assert checkpoints.prepared(["sft"], pipeline.PipelineConfig()) != first  # another config, another build
    with pytest.raises(ValueError, match="unknown stage"):
        checkpoints.prepared(["nope"], TINY)


def test_report_card_agrees_with_row_by_row_accuracy(stage_dir):
    """evaluate() scores each pair once; the same numbers must come from the preference rows."""
    tok = models.load_tokenizer(stage_dir / "sft_model")
    model = rm.load(stage_dir / "reward_model", dev=torch.device("cpu"))
    test_raw = list(data.load_jsonl(stage_dir / "feedback" / "test_comparisons_raw.jsonl", "judgment"))
    tasks = [feedback.task_of(j["task"]) for j in test_raw]
    card = reward_evaluation.evaluate(model, tok, test_raw, tasks, [[j["a"], j["b"]] for j in test_raw])
    rows = feedback.to_preferences(test_raw)
    assert card["accuracy"] == pytest.approx(rm.comparison_accuracy(model, tok, rows), abs=1e-6)
    assert card["noise_ceiling"] == pytest.approx(feedback.noise_ceiling(rows), abs=1e-6)
    gold = reward_evaluation.gold_oriented(rows)
    assert card["gold_accuracy"] == pytest.approx(rm.comparison_accuracy(model, tok, gold), abs=1e-6)
    correctness = feedback.correctness_pairs(tasks)
    assert card["correctness_accuracy"] == pytest.approx(rm.comparison_accuracy(model, tok, correctness), abs=1e-6)
    assert sum(n for _, _, n in card["calibration"]) == len(test_raw)


def test_fingerprint_does_not_depend_on_where_the_course_is_checked_out(monkeypatch, tmp_path):
    prints = []
    for checkout in ("a", "b"):  # the same package in two places
        package = tmp_path / checkout / "rlhf_course"
        shutil.copytree(checkpoints.PACKAGE_DIR, package, ignore=shutil.ignore_patterns("__pycache__"))
        monkeypatch.setattr(checkpoints, "PACKAGE_DIR", package)
        prints.append(checkpoints.fingerprint(pipeline.PipelineConfig(base_model=package / "artifacts" / "base_model")))
    assert prints[0] == prints[1]
    other = checkpoints.fingerprint(pipeline.PipelineConfig(base_model=tmp_path / "elsewhere"))
    assert other != prints[1]


def test_fingerprint_follows_the_code_the_pipeline_runs_its_seed_and_the_libraries(monkeypatch, tmp_path):
    package = tmp_path / "rlhf_course"
    shutil.copytree(checkpoints.PACKAGE_DIR, package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(checkpoints, "PACKAGE_DIR", package)
    config = pipeline.PipelineConfig()
    before = checkpoints.fingerprint(config)
    # what the pipeline never runs: a hint, a figure, the report, a widget (and the lessons, outside the package)
    for name, old, new in [
        ("checks/lesson02_sft.py", "is it inverted?", "did you swap 0 and 1?"),
        ("teaching/plots.py", 'color="C0"', 'color="C3"'),
        ("report.py", "## Reward model", "## Reward"),
        ("teaching/labeling.py", '"""', '"""\n'),
        ("algorithms/seq2seq.py", "d_ff: int = 384", "d_ff: int = 512"),
        ("artifacts/t5_base/config.json", '"d_ff": 384', '"d_ff": 512'),  # another shipped model
    ]:
        source = (package / name).read_text()
        assert old in source, (name, old)
        (package / name).write_text(source.replace(old, new, 1))
        assert checkpoints.fingerprint(config) == before, name
    sft = (package / "algorithms" / "sft.py").read_text()  # the SFT loss: imported by the pipeline
    (package / "algorithms" / "sft.py").write_text(
        sft.replace("loss = next_token_loss(logits, batch", "loss = 2 * next_token_loss(logits, batch")
    )
    edited = checkpoints.fingerprint(config)
    assert edited != before
    assert checkpoints.fingerprint(pipeline.PipelineConfig(seed=1)) != edited
    real_version = checkpoints.importlib.metadata.version
    monkeypatch.setattr(
        checkpoints.importlib.metadata, "version", lambda name: "0.0" if name == "torch" else real_version(name)
    )
    assert checkpoints.fingerprint(config) != edited


def test_fingerprint_follows_the_settings_that_change_a_run(monkeypatch):
    config = pipeline.PipelineConfig()
    before = checkpoints.fingerprint(config)
    monkeypatch.setenv("RLHF_COURSE_DECODER", "static")
    assert checkpoints.fingerprint(config) != before
