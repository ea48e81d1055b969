"""The README's tables are built from the code's tables; this keeps them from drifting apart."""

from dpo.losses import markdown_table
from tests.conftest import REPO


def test_readme_loss_table_matches_losses():
    assert markdown_table() in (REPO / "README.md").read_text()
