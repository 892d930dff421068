"""rlhf_course: instruction tuning and RLHF, built from scratch on a laptop-sized model.

The package is layered; a module imports only from its own layer and the layers listed before it:

    core/        the model and how to talk to it: runtime (device, dtype, seeds), models, language_model
                 (generation, the next-token loss), chat (encoding, replies), optimization, resume,
                 distributed, registry (the pieces learners replace)
    simulation/  the world the course trains in: tasks and their gold score (world), simulated labelers
                 (human), the feedback they give (feedback), the data sets built from it (data)
    algorithms/  what trains a model: pretrain and tokenizer, sft, reward_model, rollouts,
                 policy_gradient (REINFORCE), ppo, dpo, grpo, best_of_n, value_based (the toy MDP)
    analysis/    what measures one: evaluation, reward_evaluation, probes, ppo_probes, length_bias,
                 safety, privacy
    teaching/    what the lessons show: plots, the widgets for class (labeling, sampling_explorer,
                 dashboard, kl_explorer), and the package's code (source)
    scale/       beyond one process and beyond this package: parallel_check, data_parallel_by_hand,
                 trl_bridge
    checks/      the exercises' checks, one module per lesson

On top: ``pipeline`` (the stages in order), ``report`` (its figures and report.md), ``model_cards`` (a
card beside each model it trained), ``checkpoints``
(the lesson cache), ``exercises`` (checking and plugging in a learner's code), ``cli`` and
``config_flags`` (the ``rlhf-course`` command). ``tests/test_layout.py`` holds the imports to this order.
"""
