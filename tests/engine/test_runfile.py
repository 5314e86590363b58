"""Run files: exact round trip, atomic saves, and one clear error for every broken file."""
from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

import engine.runfile as runfile
from engine.history import History
from engine.runfile import FORMAT_VERSION, RUN_SUFFIX, RunFileError, load_run, save_run

CONFIG = {
    "scenario": "spirals",
    "model": {"kind": "mlp", "hidden": [16, 16], "activation": "relu"},
    "hyper": {"optimizer": "adam", "lr": 0.003, "clip_norm": None, "batch_size": 64},
    "seed": 7,
}


@pytest.fixture
def history() -> History:
    rng = np.random.default_rng(0)
    h = History(["loss", "grad_norm/layers.0", "grad_norm/layers.2"], raw_window=32, factor=4, tier_capacity=16)
    values = rng.normal(size=(3000, 3)).astype(np.float32)
    values[::11, 2] = np.nan
    h.append_many(np.arange(0, 6000, 2), values)
    return h


@pytest.fixture
def tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "weight/layers.0.linear": rng.normal(size=(16, 2)).astype(np.float32),
        "grad/layers.0.linear": np.array([[np.nan, np.inf], [-0.0, 1e-45]], dtype=np.float32),
        "feature_maps/conv.1": rng.normal(size=(4, 5, 5)),  # float64 stays float64
        "labels": np.arange(10, dtype=np.int64),
    }


@pytest.fixture
def saved(tmp_path, history, tensors) -> str:
    path = str(tmp_path / f"run{RUN_SUFFIX}")
    save_run(path, config=CONFIG, history=history, tensors=tensors, step=5998)
    return path


def test_round_trip(saved, history, tensors):
    run = load_run(saved)
    assert run.config == CONFIG
    assert run.meta["format_version"] == FORMAT_VERSION and run.meta["step"] == 5998
    assert run.meta["glassbox_version"] and run.meta["created"]
    assert run.history.columns == history.columns and len(run.history) == len(history)
    for name in history.columns:
        for max_points in (None, 50):
            a, b = history.series(name, max_points), run.history.series(name, max_points)
            for field in ("steps", "values", "lo", "hi"):
                np.testing.assert_array_equal(getattr(b, field), getattr(a, field))
    assert run.tensors.keys() == tensors.keys()
    for name, array in tensors.items():
        got = run.tensors[name]
        assert got.dtype == array.dtype and got.shape == array.shape
        assert got.tobytes() == array.tobytes(), name  # bit-equal, NaN payloads and -0.0 included


def test_file_is_a_zip_of_npy_and_json(saved):
    with zipfile.ZipFile(saved) as zf:
        names = zf.namelist()
        manifest = json.loads(zf.read("manifest.json"))
    assert names[0] == "manifest.json"
    assert all(n.endswith(".npy") for n in names[1:])
    assert manifest["format_version"] == FORMAT_VERSION and manifest["config"] == CONFIG


def test_save_replaces_and_leaves_no_temp(tmp_path, saved, history, tensors):
    save_run(saved, config={"scenario": "xor"}, history=history, tensors={}, step=1)
    assert load_run(saved).config == {"scenario": "xor"} and load_run(saved).tensors == {}
    assert os.listdir(tmp_path) == [os.path.basename(saved)]
    umask = os.umask(0o022)
    os.umask(umask)
    assert os.stat(saved).st_mode & 0o777 == 0o666 & ~umask  # not a temp file's 0600


def test_failed_save_keeps_old_file(tmp_path, saved, history, tensors, monkeypatch):
    before = Path(saved).read_bytes()
    # A tensor that cannot be stored without pickling.
    with pytest.raises(RunFileError, match="cannot save tensor 'odd'"):
        save_run(saved, config=CONFIG, history=history, tensors={"odd": np.array([{}, 1], dtype=object)}, step=2)
    # A config that is not JSON.
    with pytest.raises(RunFileError, match="JSON"):
        save_run(saved, config={"f": object()}, history=history, tensors=tensors, step=2)

    # The writer failing after some members are already in the temporary file.
    calls = []
    real_write = runfile._write_member

    def failing_write(archive, member, array):
        calls.append(member)
        if len(calls) == 5:
            raise OSError(28, "No space left on device")
        real_write(archive, member, array)

    monkeypatch.setattr(runfile, "_write_member", failing_write)
    with pytest.raises(OSError, match="No space"):
        save_run(saved, config=CONFIG, history=history, tensors=tensors, step=3)
    assert len(calls) == 5
    assert Path(saved).read_bytes() == before
    assert os.listdir(tmp_path) == [os.path.basename(saved)]
    assert load_run(saved).meta["step"] == 5998


def test_missing_file(tmp_path):
    path = tmp_path / "nothing.glassbox"
    with pytest.raises(RunFileError, match="nothing.glassbox: no such file"):
        load_run(path)
    with pytest.raises(RunFileError, match="folder"):
        load_run(tmp_path)


def test_not_a_run_file(tmp_path):
    text = tmp_path / "notes.glassbox"
    text.write_text("hello, this is not a run\n")
    with pytest.raises(RunFileError, match="notes.glassbox: not a Glassbox run file"):
        load_run(text)
    other_zip = tmp_path / "other.glassbox"
    with zipfile.ZipFile(other_zip, "w") as zf:
        zf.writestr("readme.txt", "a zip, but not ours")
    with pytest.raises(RunFileError, match="other.glassbox: not a Glassbox run file"):
        load_run(other_zip)
    empty = tmp_path / "empty.glassbox"
    empty.write_bytes(b"")
    with pytest.raises(RunFileError, match="empty.glassbox: file is empty"):
        load_run(empty)


def test_truncated_file(saved, tmp_path):
    data = Path(saved).read_bytes()
    cut = tmp_path / "cut.glassbox"
    for length in (2, 4, 100, len(data) // 3, len(data) // 2, len(data) - 200, len(data) - 1):
        cut.write_bytes(data[:length])
        with pytest.raises(RunFileError) as info:
            load_run(cut)
        message = str(info.value)
        assert message.startswith(f"{cut}: ") and "\n" not in message
        assert "truncated" in message, message


def test_corrupt_bytes(saved, tmp_path):
    data = Path(saved).read_bytes()
    bad = tmp_path / "bad.glassbox"
    rng = np.random.default_rng(5)
    # Every region: local headers, manifest, array data, the central directory at the end.
    for offset in list(rng.integers(0, len(data), size=40)) + [10, 40, len(data) - 30, len(data) // 2]:
        flipped = bytearray(data)
        flipped[offset] ^= 0xFF
        bad.write_bytes(bytes(flipped))
        try:
            run = load_run(bad)
        except RunFileError as exc:
            message = str(exc)
            assert message.startswith(f"{bad}: ") and "\n" not in message, message
            continue
        # A flip in bytes no reader looks at (e.g. a header's timestamp) may load: then the
        # content must still be right.
        assert run.config == CONFIG and run.meta["step"] == 5998
    flipped = bytearray(data)
    with zipfile.ZipFile(saved) as zf:  # inside the raw values' data: the CRC catches it
        info = zf.getinfo("history/raw_values.npy")
    flipped[info.header_offset + 200 + info.file_size // 2] ^= 0x01
    bad.write_bytes(bytes(flipped))
    with pytest.raises(RunFileError, match="corrupt"):
        load_run(bad)


def _rewrite(saved: str, target, manifest: dict | bytes | None, drop: str | None = None) -> None:
    """Copy a run file with a replaced manifest and/or one member left out."""
    with zipfile.ZipFile(saved) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            if info.filename == drop:
                continue
            if info.filename == "manifest.json":
                if manifest is None:
                    continue
                body = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
                dst.writestr("manifest.json", body)
            else:
                dst.writestr(info, src.read(info))


def _manifest(saved: str) -> dict:
    with zipfile.ZipFile(saved) as zf:
        return json.loads(zf.read("manifest.json"))


def test_manifest_problems(saved, tmp_path):
    target = tmp_path / "m.glassbox"
    _rewrite(saved, target, None)
    with pytest.raises(RunFileError, match="m.glassbox: not a Glassbox run file \\(no manifest.json\\)"):
        load_run(target)
    _rewrite(saved, target, b'{"format": "glassbox-run", "format_version": ')
    with pytest.raises(RunFileError, match="m.glassbox: manifest.json is not valid JSON"):
        load_run(target)
    manifest = _manifest(saved)
    manifest["format_version"] = 2
    _rewrite(saved, target, manifest)
    with pytest.raises(RunFileError) as info:
        load_run(target)
    assert str(info.value) == f"{target}: made by a newer Glassbox: format 2, this one reads up to 1"
    manifest = _manifest(saved)
    manifest["format_version"] = "one"
    _rewrite(saved, target, manifest)
    with pytest.raises(RunFileError, match="invalid format version"):
        load_run(target)
    manifest = _manifest(saved)
    del manifest["config"]
    _rewrite(saved, target, manifest)
    with pytest.raises(RunFileError, match="'config'"):
        load_run(target)
    manifest = _manifest(saved)
    manifest["step"] = True  # (a bool is an int to isinstance)
    _rewrite(saved, target, manifest)
    with pytest.raises(RunFileError, match="field 'step' is missing or not an integer"):
        load_run(target)


def test_missing_arrays(saved, tmp_path):
    target = tmp_path / "a.glassbox"
    manifest = _manifest(saved)
    member = manifest["arrays"]["tensors/weight/layers.0.linear"]["member"]
    _rewrite(saved, target, manifest, drop=member)
    with pytest.raises(RunFileError, match="a.glassbox: array 'tensors/weight/layers.0.linear' is missing"):
        load_run(target)
    _rewrite(saved, target, manifest, drop="history/raw_values.npy")
    with pytest.raises(RunFileError, match="array 'history/raw_values' is missing"):
        load_run(target)
    del manifest["arrays"]["history/tier0_mean"]
    _rewrite(saved, target, manifest)
    with pytest.raises(RunFileError, match="history is inconsistent: history array 'tier0_mean' is missing"):
        load_run(target)


def test_arrays_are_never_unpickled(saved, tmp_path):
    target = tmp_path / "p.glassbox"
    manifest = _manifest(saved)
    member = manifest["arrays"]["tensors/labels"]["member"]
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    manifest["arrays"]["tensors/labels"].update(dtype="|O", shape=[1])
    with zipfile.ZipFile(saved) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            if info.filename == "manifest.json":
                dst.writestr("manifest.json", json.dumps(manifest))
            elif info.filename == member:
                dst.writestr(member, buffer.getvalue())
            else:
                dst.writestr(info, src.read(info))
    with pytest.raises(RunFileError, match=r"array 'tensors/labels' is not a plain array \(damaged, or not from"):
        load_run(target)


def test_a_save_into_a_file_named_as_its_folder_says_so(saved, history):
    # "run.glassbox/copy.glassbox": the folder is a file. The error names the file asked for and
    # the reason, not the hidden temporary file the cleanup could not remove either.
    target = os.path.join(saved, "copy.glassbox")
    with pytest.raises(NotADirectoryError) as raised:
        save_run(target, config=CONFIG, history=history, tensors={}, step=1)
    assert str(raised.value) == f"[Errno {raised.value.errno}] cannot write {target}: Not a directory"
    assert ".tmp" not in str(raised.value)
    assert load_run(saved).meta["step"] == 5998
