"""One training run: the gate that checks everything before anything is written (gate.py), the loss table and the
trainer that computes it, the callbacks, and `execute` (execute.py), which writes the run directory.

The folder is `training`, not `train`: `dpo.train(...)` is the public function of the package, and a subpackage
of that name would replace it as soon as one of its modules was imported.
"""
