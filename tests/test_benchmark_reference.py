"""benchmarks/reference.py: timing an outside comparison program and reading its printed score."""

import sys

import pytest

from benchmarks.reference import run_reference

FAKE = """
import sys
assert sys.argv[1] == "--model_paths" and sys.argv[4:] == ["--device", "cpu"], sys.argv
print("--- a vs b ---")
print("  Average Wq_Wk_weights      Similarity(%) = {score}")
"""


def test_run_reference_times_the_process_and_reads_its_mean(tmp_path):
    main = tmp_path / "main.py"
    main.write_text(FAKE.format(score="91.74"))
    got = run_reference(sys.executable, main, tmp_path / "a", tmp_path / "b")
    assert got["mean"] == pytest.approx(0.9174)
    assert got["wall_s"] > 0 and got["peak_rss_mb"] > 0


@pytest.mark.parametrize("body", ["print('no score here')", "raise SystemExit(3)"])
def test_run_reference_refuses_a_run_without_a_score(tmp_path, body):
    main = tmp_path / "main.py"
    main.write_text(body)
    with pytest.raises(SystemExit):
        run_reference(sys.executable, main, tmp_path / "a", tmp_path / "b")
