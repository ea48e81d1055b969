"""Recipes: the YAML dialect, `base:` layers with provenance, `--set` overrides, the schema, cross-key checks.

Imports no torch and no trainer (an import-linter contract): a recipe's shape is checked on any machine. Keys
owned by a component table (loss hyperparameters, beta schedules, augmentation steps, `training:`) are checked
by the layer that owns the table, with dpo/config/signatures.py, in the same gate (dpo/training/gate.py).
"""
