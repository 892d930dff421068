import dataclasses
import json

import pytest
import torch

from rlhf_course import exercises, model_cards, pipeline, report
from rlhf_course.algorithms.sft import SFTConfig, collate, train_sft
from rlhf_course.core import chat, models, registry
from rlhf_course.core.chat import encode
from rlhf_course.scale import trl_bridge
from rlhf_course.simulation import data, world


@pytest.fixture(scope="module")
def tok():
    return models.load_tokenizer()


def test_encoded_prompt_is_a_prefix_and_reply_ends_with_eos(tok):
    row = data.sft_dataset("validation", data.DataConfig(eval_per_family=2))[0]
    ids, n_prompt = encode(tok, row["prompt"], row["completion"])
    prompt_ids, _ = encode(tok, row["prompt"])
    assert ids[:n_prompt] == prompt_ids and ids[-1] == tok.eos_token_id
    assert tok.decode(ids[n_prompt:-1]) == row["completion"][0]["content"]


def _short_run(tok, seed=0):
    model = models.load_model(dev=torch.device("cpu"))
    ds = data.sft_dataset("train", data.DataConfig(train_per_family=40))
    return train_sft(model, tok, ds, SFTConfig(epochs=1, max_examples=96, batch_size=16, seed=seed)).losses


def test_sft_with_every_solution_plugged_in_trains_like_the_reference(tok):
    reference = _short_run(tok)
    try:
        used = exercises.plug_in_passing(lesson="02", impl=exercises.SOLUTIONS_DIR, verbose=False)
        assert all(used.values()) and registry.active()["sft_labels"] != "reference"
        learner = _short_run(tok)
    finally:
        registry.reset()
    assert learner == pytest.approx(reference, rel=1e-4)
    assert sum(learner[-2:]) < sum(learner[:2])  # it learns


def test_pipeline_twice_with_the_same_seed_gives_the_same_metrics(tmp_path):
    config = pipeline.PipelineConfig(
        data=data.DataConfig(train_per_family=30, eval_per_family=3),
        sft=SFTConfig(epochs=1, max_examples=64, batch_size=16),
    )
    first = pipeline.run(tmp_path / "a", ["sft"], config)["sft"]
    second = pipeline.run(tmp_path / "b", ["sft"], config)["sft"]
    for m in (first, second):
        m.pop("seconds")
    assert first == second
    saved = json.loads((tmp_path / "a" / "metrics.json").read_text())["sft"]
    assert {"base_accuracy", "accuracy", "seconds"} <= set(saved)
    assert 0 <= saved["accuracy"] <= 1 and saved["test_prompts"] == 3 * len(world.FAMILIES)
    assert (tmp_path / "a" / "sft_model" / "model.safetensors").is_file()
    report.write(tmp_path / "a", {"sft": saved})
    assert (tmp_path / "a" / "report.md").is_file() and (tmp_path / "a" / "sft_loss.png").is_file()
    model_cards.write(tmp_path / "a", {"sft": saved})
    card = (tmp_path / "a" / "sft_model" / "README.md").read_text()
    parameters = models.load_model(tmp_path / "a" / "sft_model").num_parameters()
    assert f"{parameters:,} parameters" in card and f"| {saved['accuracy']:.3f} ± {saved['accuracy_se']:.3f} |" in card
    assert all(f"| {family} |" in card for family in world.FAMILIES)
    with pytest.raises(ValueError, match="has no metrics for stage 'ppo'"):
        model_cards.card(tmp_path / "a", "ppo", {"sft": saved})
    with pytest.raises(ValueError, match="no model card for stage 'best_of_n'"):
        model_cards.card(tmp_path / "a", "best_of_n", {"sft": saved})


def test_pipeline_seed_reaches_training(tmp_path):
    config = pipeline.PipelineConfig(
        data=data.DataConfig(train_per_family=30, eval_per_family=2),
        sft=SFTConfig(epochs=1, max_examples=32, batch_size=16),
    )
    losses = []
    for seed in (0, 1):
        config.seed = seed
        losses.append(pipeline.run(tmp_path / str(seed), ["sft"], config)["sft"]["final_loss"])
    assert losses[0] != losses[1]


def test_pipeline_rejects_unknown_stage(tmp_path):
    with pytest.raises(ValueError, match="unknown stage"):
        pipeline.run(tmp_path, ["nope"])


def test_encode_many_matches_encode_one_by_one(tok):
    tasks = world.generate_tasks("validation", 3)
    prompts = [t.prompt for t in tasks] * 2  # repeated prompts, as in comparison pairs
    replies = [world.render(t, style) for style in ("curt", "rambling") for t in tasks]
    one_by_one = [chat.encode(tok, p, [{"role": "assistant", "content": r}])[0] for p, r in zip(prompts, replies)]
    assert chat.encode_many(tok, prompts, replies) == one_by_one


def test_sft_loss_and_labels_equal_trl_sfttrainer_on_the_same_batch(tmp_path, tok):
    rows = data.sft_dataset("validation", data.DataConfig(eval_per_family=1)).to_list()  # one per family: one batch
    model = models.load_model(dev=torch.device("cpu"))
    trainer = trl_bridge.sft_trainer(model, tok, rows, tmp_path, batch_size=len(rows))
    assert abs(trl_bridge.course_sft_loss(model, tok, rows) - trl_bridge.trl_first_batch_loss(trainer)) < 1e-5

    def examples(b):  # each row's real tokens and its trained-on tokens, order-free
        return sorted(
            (tuple(ids[m.bool()].tolist()), tuple(lab[lab != -100].tolist()))
            for ids, m, lab in zip(b["input_ids"], b["attention_mask"], b["labels"])
        )

    ours = collate([encode(tok, r["prompt"], r["completion"]) for r in rows], tok.pad_token_id)
    assert examples(next(iter(trainer.get_train_dataloader()))) == examples(ours)
    assert any(len(lab) < len(ids) for ids, lab in examples(ours))  # the prompt really is left out of the loss


def test_a_resumed_sft_run_matches_an_uninterrupted_one(tmp_path, tok):
    ds = data.sft_dataset("train", data.DataConfig(train_per_family=40))
    config = SFTConfig(epochs=2, max_examples=64, batch_size=16, warmup_steps=3, checkpoint_every=3)  # 8 steps

    taken = []  # the steps each run takes itself

    def run(checkpoint_dir, stop_after=None):
        model = models.load_model(dev=torch.device("cpu"))
        taken.clear()

        def stop(row):  # an interruption: the run dies after this step
            taken.append(row["step"])
            if row["step"] + 1 == stop_after:
                raise KeyboardInterrupt

        try:
            result = train_sft(model, tok, ds, config, on_step=stop, checkpoint_dir=checkpoint_dir)
        except KeyboardInterrupt:
            return None, None
        return model, result.losses

    whole_model, whole = run(None)
    assert run(tmp_path / "checkpoint", stop_after=5) == (None, None)  # saved after step 3, lost steps 4 and 5
    resumed_model, resumed = run(tmp_path / "checkpoint")
    assert taken == [3, 4, 5, 6, 7]  # it resumed after the checkpoint: a fresh run would match too
    assert len(whole) == 8 and resumed == whole  # same losses, so the same batches and the same learning rates
    assert all(torch.equal(a, b) for a, b in zip(whole_model.parameters(), resumed_model.parameters()))


def test_a_pipeline_stage_leaves_the_plotting_backend_alone(tmp_path):
    """A lesson's first cell may build a stage in its own kernel; switching that kernel to Agg hid every later plot."""
    import matplotlib

    before = matplotlib.get_backend()
    matplotlib.use("svg")  # stands in for a notebook's inline backend
    try:
        pipeline.run(
            tmp_path,
            ["sft"],
            pipeline.PipelineConfig(
                data=data.DataConfig(train_per_family=10, eval_per_family=1),
                sft=SFTConfig(epochs=1, max_examples=16, batch_size=16),
            ),
        )
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)


def test_an_sft_run_with_another_base_model_refuses_the_first_runs_checkpoint(tmp_path, tok):
    ds = data.sft_dataset("train", data.DataConfig(train_per_family=10))
    config = SFTConfig(epochs=1, max_examples=32, batch_size=16, checkpoint_every=1)

    def interrupt(row):  # the run dies in its second step, after the first was saved
        if row["step"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_sft(
            models.load_model(dev=torch.device("cpu")),
            tok,
            ds,
            config,
            on_step=interrupt,
            checkpoint_dir=tmp_path / "checkpoint",
        )
    other = models.load_model(dev=torch.device("cpu"))
    with torch.no_grad():
        other.get_input_embeddings().weight.mul_(0.5)  # another base model
    with pytest.raises(ValueError, match="belongs to another run"):
        train_sft(other, tok, ds, config, checkpoint_dir=tmp_path / "checkpoint")
    with pytest.raises(ValueError, match="belongs to another run"):  # the same model with another seed
        train_sft(
            models.load_model(dev=torch.device("cpu")),
            tok,
            ds,
            dataclasses.replace(config, seed=1),
            checkpoint_dir=tmp_path / "checkpoint",
        )
