"""Source fingerprints follow content, not names."""
from __future__ import annotations

import shutil
from pathlib import Path

from core.identity import source_fingerprint
from core.video import default_clip


def test_fingerprint_survives_rename_and_move_but_not_other_content(tmp_path: Path) -> None:
    clip = default_clip()
    a = tmp_path / "a" / "shot.mp4"
    a.parent.mkdir()
    shutil.copy(clip, a)
    b = tmp_path / "renamed.mp4"
    shutil.copy(a, b)
    assert source_fingerprint(a) == source_fingerprint(b) == source_fingerprint(clip)
    data = bytearray(b.read_bytes())
    data[-10] ^= 0xFF  # one byte at the end of the file
    b.write_bytes(bytes(data))
    assert source_fingerprint(b) != source_fingerprint(a)


def test_image_folder_fingerprint(tmp_path: Path) -> None:
    for d in ("x", "y"):
        (tmp_path / d).mkdir()
        for i in range(3):
            (tmp_path / d / f"{i:04d}.png").write_bytes(bytes([i]) * (100 + i))
    assert source_fingerprint(tmp_path / "x") == source_fingerprint(tmp_path / "y")
    (tmp_path / "y" / "0002.png").write_bytes(b"\1" * 102)
    assert source_fingerprint(tmp_path / "x") != source_fingerprint(tmp_path / "y")
