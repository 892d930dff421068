"""What trains a model: pretraining, SFT, the reward model, rollouts, REINFORCE, PPO, DPO, GRPO, best-of-n,
and the value-based toy. Imports ``core`` and ``simulation``."""
