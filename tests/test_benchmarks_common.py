"""benchmarks/common.py: a benchmark's launcher runs start from nothing."""
import pytest

from benchmarks import common


def test_an_earlier_run_directory_is_removed(tmp_path):
    run_dir = tmp_path / "sync_b0"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "spec.json").write_text("{}")
    (run_dir / "checkpoints" / "ckpt-20.index").write_text("x")
    common.fresh_run_dir(str(run_dir))
    assert not run_dir.exists()
    common.fresh_run_dir(str(run_dir))  # nothing there: nothing to do
    assert not run_dir.exists()


def test_a_directory_not_made_by_the_launcher_is_kept(tmp_path):
    run_dir = tmp_path / "notes"
    run_dir.mkdir()
    (run_dir / "mine.txt").write_text("keep")
    with pytest.raises(common.BenchmarkError,
                       match="not a run directory of the launcher"):
        common.fresh_run_dir(str(run_dir))
    assert (run_dir / "mine.txt").read_text() == "keep"
