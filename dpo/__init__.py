"""DPO fine-tuning with overfitting controls. `dpo.train(recipe, overrides=[...])` runs one recipe."""

__version__ = "0.1.0"


def train(recipe, overrides=(), output_dir=None):
    """Train one recipe; returns the run's summary dict. See dpo.run.train for the arguments."""
    from dpo.run import train as _train

    return _train(recipe, overrides=overrides, output_dir=output_dir)


__all__ = ["train", "__version__"]
