"""Training: datasets, the epoch loop, metrics, and the `python -m engine.train.run` program."""
