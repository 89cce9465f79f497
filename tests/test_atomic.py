"""Atomic writes: the target holds the old bytes or the new ones, never a torn file, and the new
file has the permissions `open` would give it."""
import os
import stat

import pytest
from matplotlib.figure import Figure

from jcnn.train import plots
from jcnn.train.atomic import atomic_open


def test_text_and_bytes_land_whole_with_open_s_permissions(tmp_path):
    path = tmp_path / "report.json"
    with atomic_open(path) as f:
        f.write("{\"ü\": 1}\n")
    assert path.read_text(encoding="utf-8") == "{\"ü\": 1}\n"
    with atomic_open(path, "wb") as f:
        f.write(b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    with open(tmp_path / "plain", "w"):
        pass
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE((tmp_path / "plain").stat().st_mode)
    assert sorted(os.listdir(tmp_path)) == ["plain", "report.json"]


def test_a_file_that_exists_keeps_its_mode_and_the_directory_is_fsynced(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.npz"
    path.write_bytes(b"old")
    path.chmod(0o600)
    synced, real_fsync = [], os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(
        stat.S_ISDIR(os.fstat(fd).st_mode)) or real_fsync(fd))
    with atomic_open(path, "wb") as f:
        f.write(b"new")
    assert path.read_bytes() == b"new" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert synced == [False, True]  # the file's bytes, then the directory's rename


def test_a_failure_midway_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("old\n")
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(path) as f:
            f.write("half of the new")
            raise KeyboardInterrupt
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["metrics.jsonl"]


def test_a_plot_that_fails_to_draw_keeps_the_previous_png(tmp_path, monkeypatch):
    path = tmp_path / "curves.png"
    records = [{"epoch": e, "train_loss": 1 / e, "test_loss": 1.1 / e, "test_accuracy": 0.5}
               for e in (1, 2)]
    plots.plot_curves(records, path)
    before = path.read_bytes()

    def broken(self, f, **kw):
        f.write(b"\x89PNG half")
        raise OSError("disk full")
    monkeypatch.setattr(Figure, "savefig", broken)
    with pytest.raises(OSError, match="disk full"):
        plots.plot_curves(records, path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["curves.png"]


def test_only_write_modes(tmp_path):
    with pytest.raises(ValueError, match="mode must be 'w' or 'wb', got 'a'"):
        with atomic_open(tmp_path / "x", "a"):
            pass
    assert os.listdir(tmp_path) == []
