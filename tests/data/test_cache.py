"""UInt8Cache: pixels equal direct preprocessing, keys change with files and parameters, builds resume."""

from __future__ import annotations

import os
import pickle
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from medkit.data.cache import UInt8Cache
from medkit.data.pipeline import Preprocess
from medkit.errors import DataError


def _pngs(folder: Path, n: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        if i % 3 == 0:
            img = rng.integers(0, 256, (23, 31), dtype=np.uint8)
        elif i % 3 == 1:
            img = rng.integers(0, 65536, (40, 36), dtype=np.uint16)
        else:
            img = rng.integers(0, 256, (18, 18, 3), dtype=np.uint8)
        p = folder / f"img_{i:03d}.png"
        assert cv2.imwrite(str(p), img)
        paths.append(p)
    return paths


PRE = Preprocess(size=12, margin=2, channels=3)


def test_cached_pixels_equal_direct_preprocess(tmp_path: Path) -> None:
    paths = _pngs(tmp_path / "data", 9)
    paths = paths[::-1]  # rows follow the given order, not the stored (sorted) one
    cache = UInt8Cache.build(paths, PRE, tmp_path / "cache", workers=0, progress=False)
    assert len(cache) == 9
    assert cache.array.shape == (9, 16, 16, 3)
    assert cache.complete
    for i, p in enumerate(paths):
        np.testing.assert_array_equal(cache[i], PRE(p))
    batch = cache.get_batch([4, 0, 8])
    np.testing.assert_array_equal(batch, np.stack([PRE(paths[4]), PRE(paths[0]), PRE(paths[8])]))


def test_parallel_build_equals_serial(tmp_path: Path) -> None:
    paths = _pngs(tmp_path / "data", 70)
    pre = Preprocess(size=10, channels=1)
    par = UInt8Cache.build(paths, pre, tmp_path / "par", workers=2, progress=False)
    assert par.complete
    direct = np.stack([pre(p) for p in paths])
    np.testing.assert_array_equal(par.get_batch(range(70)), direct)


def test_build_chunks_are_large_and_cover_every_row_once() -> None:
    import sys

    from medkit.data.cache import _chunks, _spawn_without_main

    todo = np.arange(5, 20_005)
    chunks = _chunks(todo, workers=16)
    assert np.array_equal(np.concatenate(chunks), todo)
    assert len(chunks) == 64 and {len(c) for c in chunks[:-1]} == {313}  # about four per worker
    assert max(len(c) for c in _chunks(np.arange(10**6), 2)) == 1024 and len(_chunks(np.arange(40), 8)) == 3
    main = sys.modules["__main__"]
    before = getattr(main, "__file__", None), getattr(main, "__spec__", None)
    with _spawn_without_main():  # spawned workers then do not run this program's main module again
        assert getattr(main, "__file__", None) is None and getattr(main, "__spec__", None) is None
    assert (getattr(main, "__file__", None), getattr(main, "__spec__", None)) == before


def test_reopen_computes_nothing_and_cache_pickles_small(tmp_path: Path) -> None:
    paths = _pngs(tmp_path / "data", 5)
    first = UInt8Cache.build(paths, PRE, tmp_path / "cache", workers=0, progress=False)
    calls: list[int] = []
    again = UInt8Cache.build(paths, PRE, tmp_path / "cache", workers=0, progress=False, on_row=calls.append)
    assert calls == []
    assert again.key == first.key
    _ = again.array  # open the memmap, then make sure it is not what gets pickled
    blob = pickle.dumps(again)
    assert len(blob) < 4000
    np.testing.assert_array_equal(pickle.loads(blob)[3], again[3])


def test_key_changes_with_files_and_parameters(tmp_path: Path) -> None:
    paths = _pngs(tmp_path / "data", 4)
    root = tmp_path / "cache"
    base = UInt8Cache.build(paths, PRE, root, workers=0, progress=False).key

    st = paths[1].stat()
    os.utime(paths[1], ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # touched
    computed: list[int] = []
    touched = UInt8Cache.build(paths, PRE, root, workers=0, progress=False, on_row=computed.append).key
    assert touched != base
    assert len(computed) == 1  # the other rows are copied from the previous cache

    cv2.imwrite(str(paths[2]), np.full((9, 9), 7, dtype=np.uint8))  # content replaced
    computed.clear()
    changed = UInt8Cache.build(paths, PRE, root, workers=0, progress=False, on_row=computed.append)
    assert changed.key not in (base, touched)
    assert len(computed) == 1
    np.testing.assert_array_equal(changed[2], np.full((16, 16, 3), 7, dtype=np.uint8))
    for i, p in enumerate(paths):
        np.testing.assert_array_equal(changed[i], PRE(p))

    assert UInt8Cache.build(paths[:3], PRE, root, workers=0, progress=False).key != changed.key  # file removed
    other = Preprocess(size=12, margin=2, channels=1)
    computed.clear()
    assert UInt8Cache.build(paths, other, root, workers=0, progress=False, on_row=computed.append).key != changed.key
    assert len(computed) == 4  # other parameters: nothing to reuse
    assert Preprocess(size=12, margin=2, channels=3, bit_depth="percentile").key() != PRE.key()
    assert Preprocess(size=(12, 12), margin=2, channels=3).key() == PRE.key()
    # order of the paths does not matter for the key
    assert UInt8Cache.build(paths[::-1], PRE, root, workers=0, progress=False).key == changed.key


def test_interrupted_build_resumes_with_only_the_missing_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = _pngs(tmp_path / "data", 10)
    root = tmp_path / "cache"
    calls: list[str] = []
    original = Preprocess.__call__

    def crashing(self: Preprocess, path: str) -> np.ndarray:
        calls.append(str(path))
        if len(calls) == 7:
            raise KeyboardInterrupt  # the user pressed Ctrl-C while the 7th image was decoded
        return original(self, path)

    monkeypatch.setattr(Preprocess, "__call__", crashing)
    with pytest.raises(KeyboardInterrupt):
        UInt8Cache.build(paths, PRE, root, workers=0, progress=False)
    (key_dir,) = [d for d in root.iterdir() if d.is_dir()]
    assert np.load(key_dir / "done.npy").sum() == 6

    calls.clear()
    monkeypatch.setattr(Preprocess, "__call__", lambda self, path: (calls.append(str(path)), original(self, path))[1])
    cache = UInt8Cache.build(paths, PRE, root, workers=0, progress=False)
    assert len(calls) == 4  # only the rows that were not done
    assert cache.complete
    monkeypatch.setattr(Preprocess, "__call__", original)
    for i, p in enumerate(paths):
        np.testing.assert_array_equal(cache[i], PRE(p))


def test_corrupt_file_names_the_file_and_keeps_progress(tmp_path: Path) -> None:
    paths = _pngs(tmp_path / "data", 6)
    bad = tmp_path / "data" / "img_004.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    before = bad.read_bytes()
    with pytest.raises(DataError, match="img_004.png") as info:
        UInt8Cache.build(paths, PRE, tmp_path / "cache", workers=0, progress=False)
    assert info.value.hint
    assert bad.read_bytes() == before  # input untouched
    (key_dir,) = [d for d in (tmp_path / "cache").iterdir() if d.is_dir()]
    assert np.load(key_dir / "done.npy").sum() == 4  # img_000..003 were done before it

    cv2.imwrite(str(bad), np.zeros((5, 5), np.uint8))  # the user fixes the file: only 004 and 005 are decoded
    computed: list[int] = []
    fixed = UInt8Cache.build(paths, PRE, tmp_path / "cache", workers=0, progress=False, on_row=computed.append)
    assert sorted(computed) == [4, 5]
    for i, p in enumerate(paths):
        np.testing.assert_array_equal(fixed[i], PRE(p))


def test_corrupt_file_in_parallel_build(tmp_path: Path) -> None:
    paths = _pngs(tmp_path / "data", 40)
    (tmp_path / "data" / "img_037.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="img_037.png"):
        UInt8Cache.build(paths, PRE, tmp_path / "cache", workers=2, progress=False)
    (key_dir,) = [d for d in (tmp_path / "cache").iterdir() if d.is_dir()]
    assert np.load(key_dir / "done.npy").sum() >= 32  # the first chunk of 32 rows is complete


def test_concurrent_builds_of_one_cache_decode_each_file_once(tmp_path: Path) -> None:
    paths = _pngs(tmp_path / "data", 12)
    computed: list[int] = []
    results: list[UInt8Cache] = []

    def build() -> None:
        results.append(
            UInt8Cache.build(paths, PRE, tmp_path / "cache", workers=0, progress=False, on_row=computed.append)
        )

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and results[0].key == results[1].key
    assert sorted(computed) == list(range(12))  # the second builder waited and found the rows done
    np.testing.assert_array_equal(results[1][5], PRE(paths[5]))


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    paths = _pngs(tmp_path / "data", 2)
    with pytest.raises(DataError, match="nope.png"):
        UInt8Cache.build([*paths, tmp_path / "data" / "nope.png"], PRE, tmp_path / "cache", workers=0, progress=False)


def test_dicom_ct_cache_with_windows(tmp_path: Path) -> None:
    pydicom = pytest.importorskip("pydicom")
    from _factories import write_dicom

    from medkit.io.dicom import multi_window

    paths = []
    rng = np.random.default_rng(0)
    for i in range(3):
        raw = rng.integers(0, 2000, (32, 32)).astype(np.int16)
        write_dicom(tmp_path / f"s{i}.dcm", raw, bits_stored=16, signed=True)
        paths.append(tmp_path / f"s{i}.dcm")
    pre = Preprocess(size=16, windows=("brain", "subdural", "bone"))
    cache = UInt8Cache.build(paths, pre, tmp_path / "cache", workers=0, progress=False)
    assert cache.array.shape == (3, 16, 16, 3)
    hu = pydicom.dcmread(paths[1]).pixel_array.astype(np.float32) - 1024
    expected = cv2.resize(multi_window(hu, ["brain", "subdural", "bone"]), (16, 16), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(cache[1], expected)
