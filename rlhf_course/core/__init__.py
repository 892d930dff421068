"""The model and how to talk to it: device and seeds, loading and saving, generation, chat encoding,
the optimizer step, checkpoints of a run, data parallelism and the registry of replaceable pieces.
Imports nothing else from the package."""
