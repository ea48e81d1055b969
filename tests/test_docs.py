"""The docs: their tables are built from the code's tables, their links lead somewhere, and the README's recipe is
the shipped one. This keeps the pages from drifting apart from the code and from each other."""

import re
from pathlib import Path

import pytest
import yaml

from dpo.data import augment, rows
from dpo.training.losses import markdown_table
from tests.conftest import REPO

DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _prose(path: Path) -> str:
    """The page without fenced code blocks and inline code, where brackets are code, not links."""
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def _anchors(path: Path) -> set[str]:
    """The ids GitHub gives the page's headings: lower case, punctuation dropped, spaces -> hyphens."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_loss_table_matches_losses():
    assert markdown_table() in (DOCS / "losses.md").read_text()


def test_beta_schedule_table_matches_the_schedules():
    from dpo.training.beta import markdown_table as schedules_table

    assert schedules_table() in (DOCS / "losses.md").read_text()


def test_data_tables_match_the_code():
    page = (DOCS / "data.md").read_text()
    assert augment.markdown_table() in page
    assert rows.reasons_table() in page


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_point_to_existing_files_and_headings(page):
    links = [target for target in LINK.findall(_prose(page)) if not re.match(r"[a-z]+:", target)]
    assert links, f"{page.name} links to nothing (every page links at least back to the README)"
    for target in links:
        path_part, _, anchor = target.partition("#")
        linked = (page.parent / path_part).resolve() if path_part else page
        assert linked.exists(), f"{page.relative_to(REPO)}: link to {target}: {linked} does not exist"
        if anchor and linked.suffix == ".md":
            assert anchor in _anchors(linked), f"{page.relative_to(REPO)}: link to {target}: no such heading"


def test_bad_input_count_is_the_corpus():
    cases = yaml.safe_load((REPO / "tests" / "bad_inputs" / "cases.yaml").read_text())
    stated = re.search(r"holds\s+(\d+)\s+bad\s+inputs", (DOCS / "run-directory.md").read_text())
    assert stated, "docs/run-directory.md no longer says how many bad inputs tests/bad_inputs/ holds"
    assert int(stated[1]) == len(cases), f"docs/run-directory.md says {stated[1]}, cases.yaml has {len(cases)}"


def test_readme_links_every_docs_page():
    linked = {(REPO / target).resolve() for target in LINK.findall(_prose(REPO / "README.md"))}
    assert {page.resolve() for page in DOCS.glob("*.md")} <= linked


def test_readme_recipe_is_the_shipped_quickstart():
    """The README shows recipes/quickstart.yaml without its opening comment lines, exactly."""
    shipped = (REPO / "recipes" / "quickstart.yaml").read_text().splitlines()
    body = "\n".join(shipped[next(i for i, line in enumerate(shipped) if not line.startswith("#")) :])
    assert f"```yaml\n{body}\n```" in (REPO / "README.md").read_text()


@pytest.mark.parametrize(("results", "command"), [
    ("noise.md", "python eval/bench_noise.py --no-train"),
    ("quickstart.md", "python eval/bench_quickstart.py"),
])  # fmt: skip
def test_readme_tables_are_the_benchmarks(results, command):
    """Every number of the README's noise and quickstart tables is the one the benchmark's command wrote at the end of
    its eval/results/ file; when the runs change, that table is copied into the README."""
    path = REPO / "eval" / "results" / results
    assert path.is_file(), f"no eval/results/{results}: run {command}"
    text = path.read_text()
    marker = "The README's table"
    assert marker in text, f"eval/results/{results} has no README table: run {command}"
    table = [line for line in text.split(marker)[1].splitlines() if line.startswith("|")]
    readme = (REPO / "README.md").read_text().splitlines()
    assert table[0] in readme, f"the README has no table from eval/results/{results}"
    start = readme.index(table[0])
    in_readme = readme[start : start + len(table) + 1]
    assert in_readme == [*table, ""], f"the README's table is not the one in eval/results/{results}: copy it"
