"""Build configuration pyproject.toml cannot express: the shipped recipes and data sets as package data.

They stay at the top of the repository (recipes/, data/), where a clone's commands and the README find them; the
wheel maps them into the package as dpo/_shipped/recipes and dpo/_shipped/data. The relative layout is kept, so a
recipe's `../data/...` paths resolve the same in a clone and in an installed package. dpo/config/shipped.py finds
them in either place. Everything else is in pyproject.toml.
"""

from setuptools import find_packages, setup

SHIPPED = {"dpo._shipped.recipes": "recipes", "dpo._shipped.data": "data"}

setup(
    packages=find_packages(include=["dpo", "dpo.*"]) + list(SHIPPED),
    package_dir=SHIPPED,
    package_data={
        "dpo._shipped.recipes": ["*.yaml", "**/*.yaml"],
        "dpo._shipped.data": ["**/*.jsonl", "**/*.json", "**/*.py"],
    },
)
