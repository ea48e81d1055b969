"""Where a prepared training pair came from (dpo/data/provenance.py), as `dpo data audit` names suspect rows."""

from __future__ import annotations

import json

from dpo.config.schema import DataSection
from dpo.data.provenance import locate


def test_a_pair_is_found_at_its_own_row_before_a_row_with_the_labels_swapped(tmp_path):
    """A file holding one pair twice, labels swapped in the later row (what a mislabelled duplicate looks like):
    each prepared pair is named by the row with its answers in its order; a pair flipped by augmentation (in no
    row in its order) by the row that holds it swapped; a multi-response row by its own number; anything else by
    nothing."""
    rows = [
        {"prompt": "Q0", "chosen": "a0", "rejected": "b0"},
        {"prompt": "Q1", "chosen": "a1", "rejected": "b1"},
        {"prompt": "Q0", "chosen": "b0", "rejected": "a0"},
        {"prompt": "Q2", "responses": ["x", "y", "z"], "scores": [3, 2, 1]},
    ]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = [
        {"prompt": "Q0", "chosen": "b0", "rejected": "a0"},
        {"prompt": "Q0", "chosen": "a0", "rejected": "b0"},
        {"prompt": "Q1", "chosen": "b1", "rejected": "a1"},  # flipped by label_noise
        {"prompt": "Q2", "chosen": "z", "rejected": "x"},
        {"prompt": "Q3", "chosen": "new", "rejected": "pair"},
    ]
    where = str(data)
    assert locate(DataSection(train=where), pairs) == [(where, 3), (where, 1), (where, 2), (where, 4), (None, None)]
