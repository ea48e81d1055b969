"""DPO fine-tuning with overfitting controls. `dpo.train(recipe, overrides=[...])` runs one recipe.

The package's folders are its layers (see docs/architecture.md): config/ -> data/ -> training/ -> rundir/, read by
analysis/, plan/ and sweep/; serve/ exports a finished run's weights and generates with them; api.py holds the
Python entry points and cli.py the `dpo` command.
"""

__version__ = "0.1.0"


def train(recipe, overrides=(), output_dir=None, resume=False):
    """Train one recipe; returns the run's summary dict. See dpo.api.train for the arguments."""
    from dpo.api import train as _train

    return _train(recipe, overrides=overrides, output_dir=output_dir, resume=resume)


__all__ = ["train", "__version__"]
