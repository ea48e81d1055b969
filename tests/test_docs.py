"""The README's tables are built from the code's tables; this keeps them from drifting apart."""

from dpo.data import augment, rows
from dpo.train.losses import markdown_table
from tests.conftest import REPO


def test_readme_loss_table_matches_losses():
    assert markdown_table() in (REPO / "README.md").read_text()


def test_readme_data_tables_match_the_code():
    readme = (REPO / "README.md").read_text()
    assert augment.markdown_table() in readme
    assert rows.reasons_table() in readme
