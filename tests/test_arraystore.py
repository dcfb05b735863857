"""The memory-mapped array store: a commit leaves no temporary arrays behind."""
import numpy as np

from core import arraystore


def test_commit_removes_stale_temporary_arrays(tmp_path):
    # what a writer killed mid-write (or Windows refusing to delete a mapped file) leaves
    stale = tmp_path / ".alpha.abc123.npy"
    stale.write_bytes(b"\x93NUMPY stale")
    w = arraystore.StoreWriter(tmp_path)
    w.put("alpha", np.arange(6, dtype=np.uint8).reshape(2, 3))
    w.create("dropped", (4,), np.float32)
    w.discard("dropped")
    w.commit({"key": "k"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alpha.npy", "meta.json"]
    assert arraystore.read_meta(tmp_path)["arrays"] == ["alpha"]
    np.testing.assert_array_equal(arraystore.open_array(tmp_path, "alpha"), np.arange(6).reshape(2, 3))
