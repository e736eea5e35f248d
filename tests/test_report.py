"""The results tables and claims the notebooks print, against numbers worked out by hand."""
import json

import numpy as np

from stt import report

A = {"s1": 0.60, "s2": 0.70, "s3": 0.80, "s4": 0.50, "s5": 0.90}
B = {"s1": 0.50, "s2": 0.60, "s3": 0.75, "s4": 0.45, "s5": 0.80}  # A - B: 10, 10, 5, 5, 10 points


def test_claim_states_means_difference_and_whether_it_is_clear():
    line = report.claim("A beats B", A, B)
    assert line.startswith("A beats B: yes (70.0 vs 62.0 J&F; difference +8.0, 95 % CI [")
    assert line.endswith("over 5 sequences: clear)")  # every per-sequence difference is +5 to +10
    assert "no (" in report.claim("B beats A", B, A)
    assert "too few sequences" in report.claim("A beats B", {"s1": 0.6}, {"s1": 0.5})
    assert report.claim("A beats B by 15", A, B, margin=15.0).startswith("A beats B by 15: no (")


def test_jf_table_rows_hold_the_means_and_paired_differences():
    results = {k: {"J&F-Mean": np.mean(list(v.values())), "J-Mean": 0.5, "F-Mean": 0.6} for k, v in (("a", A), ("b", B))}
    table = report.jf_table(results, {"a": A, "b": B}, "a", {"a": "600 steps"}, "toy", paper=[("P", 70.7, "YT", "D17")])
    rows = table.splitlines()
    assert rows[0].startswith("| model | J&F | 95 % CI | a minus this") and len(rows) == 5
    assert rows[2].startswith("| a | 70.0 | [") and "| 600 steps | toy |" in rows[2]
    assert rows[3].startswith("| b | 62.0 | [") and "| +8.0 [" in rows[3]
    assert rows[4] == "| P (paper) | 70.7 | | | | | YT | D17 |"


def test_write_results_writes_markdown_and_json(tmp_path):
    report.write_results(tmp_path, "x", "| t |", {"a": 1})
    report.write_results(tmp_path, "only-json", None, {"b": 2})
    assert (tmp_path / "results" / "x.md").read_text() == "| t |\n"
    assert json.loads((tmp_path / "results" / "x.json").read_text()) == {"a": 1}
    assert not (tmp_path / "results" / "only-json.md").exists()


def test_study_rows_compare_each_variant_with_the_reference():
    study = {"full": {"jf": A}, "undo": {"jf": B}}
    rows = report.study_rows(study, "full", {"full": "all fixes", "undo": "one undone", "absent": "not run"}).splitlines()
    assert len(rows) == 4 and rows[2].startswith("| full | all fixes | 70.0 |")
    assert rows[3].startswith("| undo | one undone | 62.0 |") and "| +8.0 [" in rows[3]
