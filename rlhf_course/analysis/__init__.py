"""What measures a model: evaluation on held-out prompts, the reward model's report card, probes of
frozen features and of PPO, length bias, safety and privacy. Imports the layers below it."""
