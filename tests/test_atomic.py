import pytest

from pipeline.atomic import atomic_dir, atomic_path


def test_failed_folder_write_keeps_the_old_folder_and_no_partial(tmp_path):
    out = tmp_path / "prepared"
    out.mkdir()
    (out / "manifest.csv").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(out) as partial:
        (partial / "manifest.csv").write_text("half")
        raise RuntimeError("stage died")
    assert (out / "manifest.csv").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]
    with atomic_dir(out) as partial:
        (partial / "manifest.csv").write_text("new")
    assert [p.name for p in out.iterdir()] == ["manifest.csv"] and (out / "manifest.csv").read_text() == "new"


def test_failed_file_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "model.onnx") as partial:
        partial.write_bytes(b"half")
        raise RuntimeError("parity failed")
    assert list(tmp_path.iterdir()) == []
