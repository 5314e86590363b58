"""Data sets: determinism, splits, geometry of every built-in set, and the user-file loaders."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.data import DATASETS, DataError, Dataset, DataSpec, make_dataset
from engine.data.images import SHAPE_CLASSES, render_shapes

TWO_D = ("xor", "circles", "moons", "spirals", "blobs")


def _whole(d: Dataset) -> tuple[np.ndarray, np.ndarray]:
    return (
        torch.cat([d.x_train, d.x_val]).numpy(),
        torch.cat([d.y_train, d.y_val]).numpy(),
    )


# --------------------------------------------------------------------------- determinism, split


@pytest.mark.parametrize("name", DATASETS)
def test_same_seed_is_bit_identical_and_other_seed_differs(name: str) -> None:
    a = make_dataset(DataSpec(name, n=60, seed=3))
    b = make_dataset(DataSpec(name, n=60, seed=3))
    c = make_dataset(DataSpec(name, n=60, seed=4))
    for field in ("x_train", "y_train", "x_val", "y_val"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert not torch.equal(a.x_train, c.x_train)


@pytest.mark.parametrize(
    ("n", "fraction", "n_val"), [(100, 0.2, 20), (50, 0.3, 15), (10, 0.0, 0), (5, 0.01, 1)]
)
def test_split_sizes(n: int, fraction: float, n_val: int) -> None:
    d = make_dataset(DataSpec("moons", n=n, val_fraction=fraction))
    assert len(d.x_val) == len(d.y_val) == n_val
    assert len(d.x_train) == len(d.y_train) == n - n_val


def test_split_partitions_the_unsplit_set() -> None:
    # The drawing stream does not depend on the split, so train + val must be exactly the
    # examples of the unsplit set: no example lost, none duplicated.
    split = make_dataset(DataSpec("blobs", n=200, val_fraction=0.25, seed=7))
    whole = make_dataset(DataSpec("blobs", n=200, val_fraction=0.0, seed=7))
    x_split, y_split = _whole(split)
    rows = lambda x, y: sorted(map(tuple, np.column_stack([x, y]).tolist()))  # noqa: E731
    assert rows(x_split, y_split) == rows(whole.x_train.numpy(), whole.y_train.numpy())
    assert len(split.x_val) == 50


def test_bad_specs_raise_data_error() -> None:
    with pytest.raises(DataError, match="unknown data set 'mnist'"):
        DataSpec("mnist")
    with pytest.raises(DataError, match="val_fraction"):
        DataSpec("moons", val_fraction=1.0)
    with pytest.raises(DataError, match="needs a path"):
        make_dataset(DataSpec("folder"))


# --------------------------------------------------------------------------- 2-D sets


@pytest.mark.parametrize("name", TWO_D)
def test_two_d_types_ranges_and_balance(name: str) -> None:
    d = make_dataset(DataSpec(name, n=301, classes=4))
    x, y = _whole(d)
    assert d.task == "classification" and d.input_shape == (2,)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert x.shape == (301, 2) and np.abs(x).max() < 2.5
    k = 4 if name == "blobs" else 2
    assert d.n_outputs == k and len(d.class_names) == k
    counts = np.bincount(y, minlength=k)
    assert counts.sum() == 301 and counts.max() - counts.min() <= 1


def test_xor_labels_follow_quadrants_without_noise() -> None:
    x, y = _whole(make_dataset(DataSpec("xor", n=400, noise=0.0)))
    np.testing.assert_array_equal(y, (x[:, 0] * x[:, 1] < 0).astype(np.int64))
    assert np.abs(x).min() >= 0.1 - 1e-6 and np.abs(x).max() <= 1.5 + 1e-6


def test_circles_radii_without_noise() -> None:
    x, y = _whole(make_dataset(DataSpec("circles", n=200, noise=0.0)))
    radius = np.hypot(x[:, 0], x[:, 1])
    np.testing.assert_allclose(radius, np.where(y == 0, 1.2, 0.6), atol=1e-6)


def test_moons_lie_on_their_half_circles_without_noise() -> None:
    x, y = _whole(make_dataset(DataSpec("moons", n=200, noise=0.0)))
    upper, lower = x[y == 0] + [0.5, 0.25], x[y == 1] + [0.5, 0.25]
    np.testing.assert_allclose(np.hypot(*upper.T), 1.0, atol=1e-6)
    assert (upper[:, 1] >= -1e-6).all()
    np.testing.assert_allclose(np.hypot(lower[:, 0] - 1.0, lower[:, 1] - 0.5), 1.0, atol=1e-6)
    assert (lower[:, 1] <= 0.5 + 1e-6).all()


def test_spirals_follow_archimedes_without_noise() -> None:
    x, y = _whole(make_dataset(DataSpec("spirals", n=300, noise=0.0)))
    radius = np.hypot(x[:, 0], x[:, 1])
    t = (radius - 0.1) / (1.45 - 0.1)
    expected = 2 * np.pi * 1.75 * t + np.pi * y
    angle = np.arctan2(x[:, 1], x[:, 0])
    wrapped = np.angle(np.exp(1j * (angle - expected)))
    np.testing.assert_allclose(wrapped, 0.0, atol=1e-4)
    assert t.min() >= -1e-6 and t.max() <= 1 + 1e-6


def test_blobs_centres_and_spread() -> None:
    x, y = _whole(make_dataset(DataSpec("blobs", n=6000, classes=3, noise=0.1)))
    for k in range(3):
        angle = 2 * np.pi * k / 3 + np.pi / 2
        pts = x[y == k]
        np.testing.assert_allclose(pts.mean(0), [np.cos(angle), np.sin(angle)], atol=0.03)
        np.testing.assert_allclose(pts.std(0), 0.3, rtol=0.08)


def test_regression_is_a_noisy_sine() -> None:
    d = make_dataset(DataSpec("regression", n=4000, noise=0.1))
    x, y = _whole(d)
    assert d.task == "regression" and d.n_outputs == 1 and x.shape == y.shape == (4000, 1)
    assert d.y_train.dtype == torch.float32
    residual = y - np.sin(3 * x)
    assert abs(residual.mean()) < 0.01 and residual.std() == pytest.approx(0.1, rel=0.06)
    x0, y0 = _whole(make_dataset(DataSpec("regression", n=50, noise=0.0)))
    np.testing.assert_allclose(y0, np.sin(3 * x0), atol=1e-6)


# --------------------------------------------------------------------------- shapes


def test_shapes_images() -> None:
    d = make_dataset(DataSpec("shapes", n=100))
    x, y = _whole(d)
    assert d.input_shape == (1, 28, 28) and x.shape == (100, 1, 28, 28)
    assert d.x_train.dtype == torch.float32 and x.min() >= 0.0 and x.max() <= 1.0
    assert d.class_names == SHAPE_CLASSES and len(SHAPE_CLASSES) >= 4 and d.n_outputs == 5
    assert np.bincount(y, minlength=5).tolist() == [20] * 5
    # Every image carries a stroke and none is a copy of another.
    clean = _whole(make_dataset(DataSpec("shapes", n=50, noise=0.0)))[0]
    assert (clean.max(axis=(1, 2, 3)) == 1.0).all()
    assert len({img.tobytes() for img in clean}) == 50


def test_render_circle_matches_direct_distance() -> None:
    circle = SHAPE_CLASSES.index("circle")
    image = render_shapes(
        np.array([circle]), np.array([8.0]), np.array([0.7]), np.array([[14.0, 13.0]])
    )[0]
    yy, xx = np.mgrid[0:28, 0:28] + 0.5
    expected = np.clip(1.5 - np.abs(np.hypot(xx - 14.0, yy - 13.0) - 8.0), 0.0, 1.0)
    np.testing.assert_allclose(image, expected, atol=1e-9)


def test_render_rotation_quarter_turn_transposes_a_centred_line() -> None:
    line = SHAPE_CLASSES.index("line")
    flat, upright = render_shapes(
        np.array([line, line]), np.array([9.0, 9.0]), np.array([0.0, np.pi / 2]),
        np.array([[14.0, 14.0], [14.0, 14.0]]),
    )
    np.testing.assert_allclose(flat, upright.T, atol=1e-9)
    assert flat[13:15].sum() > 10 * flat[:10].sum()  # the stroke is the horizontal middle rows


# --------------------------------------------------------------------------- sequences


@pytest.mark.parametrize("name", ["copy", "reverse", "sort"])
def test_token_targets(name: str) -> None:
    d = make_dataset(DataSpec(name, n=200, seq_len=6, vocab=5))
    x, y = _whole(d)
    assert d.task == "tokens" and d.input_shape == (6,) and x.shape == y.shape == (200, 6)
    assert x.dtype == y.dtype == np.int64 and x.min() >= 0 and x.max() <= 4
    assert d.n_outputs == d.vocab_size == 5 and d.token_names == ("0", "1", "2", "3", "4")
    expected = {"copy": x, "reverse": x[:, ::-1], "sort": np.sort(x, axis=1)}[name]
    np.testing.assert_array_equal(y, expected)
    if name == "sort":
        assert (np.diff(y, axis=1) >= 0).all()


def test_long_range_label_is_the_first_token_only() -> None:
    d = make_dataset(DataSpec("long_range", n=400, vocab=8, val_fraction=0.0))
    x, y = d.x_train.numpy(), d.y_train.numpy()
    assert d.task == "classification" and d.n_outputs == 2 and d.vocab_size == 8
    assert x.shape == (400, 30) and d.input_shape == (30,) and x.dtype == np.int64
    np.testing.assert_array_equal(y, (x[:, 0] >= 4).astype(np.int64))
    assert np.bincount(y).tolist() == [200, 200]
    # 80 % of the distractor tails appear twice, once behind each label, so tails explain at
    # most the other 20 %; the tokens after the first carry no label information.
    labels_by_tail: dict[bytes, list[int]] = {}
    for row, label in zip(x, y):
        labels_by_tail.setdefault(row[1:].tobytes(), []).append(int(label))
    paired = [v for v in labels_by_tail.values() if len(v) == 2]
    assert all(sorted(v) == [0, 1] for v in paired) and 2 * len(paired) == 320
    assert all(len(v) in (1, 2) for v in labels_by_tail.values())
    assert x[:, 1:].min() == 0 and x[:, 1:].max() == 7
    assert make_dataset(DataSpec("long_range", n=10, long_range_len=12)).input_shape == (12,)


def test_long_range_split_keeps_pairs_together() -> None:
    d = make_dataset(DataSpec("long_range", n=1000, val_fraction=0.2, seed=2))
    train = {row[1:].tobytes() for row in d.x_train.numpy()}
    val = {row[1:].tobytes() for row in d.x_val.numpy()}
    # A tail on both sides would let memorisation score below chance on validation.
    assert len(train & val) <= 1 and len(d.x_val) == 200
    assert abs(d.y_val.float().mean().item() - 0.5) < 0.06


# --------------------------------------------------------------------------- folder loader


def _png(path: Path, value: int | tuple[int, int, int], size: tuple[int, int] = (12, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "L" if isinstance(value, int) else "RGB"
    Image.new(mode, size, value).save(path)


def test_folder_loader_grayscale(tmp_path: Path) -> None:
    for i in range(3):
        _png(tmp_path / "dog" / f"d{i}.png", 204)
        _png(tmp_path / "cat" / f"c{i}.png", 51)
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden").mkdir()
    d = make_dataset(DataSpec("folder", path=str(tmp_path), image_size=8, val_fraction=0.5))
    x, y = _whole(d)
    assert d.class_names == ("cat", "dog") and d.n_outputs == 2 and d.task == "classification"
    assert x.shape == (6, 1, 8, 8) and d.input_shape == (1, 8, 8) and x.dtype == np.float32
    np.testing.assert_allclose(x.reshape(6, -1).mean(1), np.where(y == 0, 0.2, 0.8), atol=1e-6)
    assert len(d.x_val) == 3


def test_folder_loader_colour(tmp_path: Path) -> None:
    _png(tmp_path / "red" / "a.png", (255, 0, 0))
    _png(tmp_path / "blue" / "b.bmp", (0, 0, 255))
    _png(tmp_path / "blue" / "c.jpg", (0, 0, 255))
    d = make_dataset(DataSpec("folder", path=str(tmp_path), image_size=5, val_fraction=0.0))
    x, y = _whole(d)
    assert x.shape == (3, 3, 5, 5) and d.class_names == ("blue", "red")
    red = x[y == 1][0]
    np.testing.assert_allclose(red[0], 1.0)
    np.testing.assert_allclose(red[1:], 0.0)
    assert (x[y == 0][:, 2] > 0.95).all()  # jpeg is lossy, but blue stays blue


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data folder not found: .*nowhere"):
        make_dataset(DataSpec("folder", path=str(tmp_path / "nowhere")))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="data folder is empty"):
        make_dataset(DataSpec("folder", path=str(empty)))
    flat = tmp_path / "flat"
    _png(flat / "a.png", 10)
    with pytest.raises(DataError, match="no class sub-folders in .*flat"):
        make_dataset(DataSpec("folder", path=str(flat)))
    broken = tmp_path / "broken"
    _png(broken / "ok" / "good.png", 10)
    (broken / "ok" / "bad.png").write_bytes(b"definitely not a png")
    with pytest.raises(DataError, match=r"cannot read image .*bad\.png"):
        make_dataset(DataSpec("folder", path=str(broken)))
    no_images = tmp_path / "no_images"
    (no_images / "a").mkdir(parents=True)
    (no_images / "a" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="no images found"):
        make_dataset(DataSpec("folder", path=str(no_images)))
    single = tmp_path / "single"
    _png(single / "cats" / "a.png", 10)
    (single / "dogs").mkdir()
    with pytest.raises(DataError, match="only one class folder with images in .*'cats'"):
        make_dataset(DataSpec("folder", path=str(single)))


# --------------------------------------------------------------------------- npz loader


def _npz(path: Path, **arrays: np.ndarray) -> str:
    np.savez(path, **arrays)
    return str(path)


def test_npz_classification_relabels_sorted(tmp_path: Path) -> None:
    x = np.arange(30, dtype=np.float64).reshape(10, 3)
    labels = np.array([7, 3, 3, 7, 7, 3, 3, 7, 7, 3])
    path = _npz(tmp_path / "d.npz", X=x, Y=labels)
    d = make_dataset(DataSpec("npz", path=path, val_fraction=0.0))
    assert d.task == "classification" and d.class_names == ("3", "7") and d.n_outputs == 2
    assert d.input_shape == (3,) and d.x_train.dtype == torch.float32
    # Rows keep their labels through the shuffle: row i starts with 3 * i.
    rows = (d.x_train[:, 0] / 3).long().numpy()
    np.testing.assert_array_equal(d.y_train.numpy(), (labels[rows] == 7).astype(np.int64))


def test_npz_regression_images_and_tokens(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = _npz(tmp_path / "r.npz", x=rng.normal(size=(20, 2)), y=rng.normal(size=20))
    reg = make_dataset(DataSpec("npz", path=path))
    assert reg.task == "regression" and reg.n_outputs == 1 and reg.y_train.shape == (16, 1)
    assert reg.y_train.dtype == torch.float32

    images = rng.integers(0, 256, size=(8, 6, 6), dtype=np.uint8)
    path = _npz(tmp_path / "i.npz", images=images, labels=np.arange(8) % 2)
    img = make_dataset(DataSpec("npz", path=path, val_fraction=0.0))
    assert img.input_shape == (1, 6, 6)
    got = sorted(img.x_train.numpy().reshape(8, -1).tolist())
    np.testing.assert_allclose(got, sorted((images.reshape(8, -1) / 255.0).tolist()), atol=1e-6)

    tokens = rng.integers(0, 5, size=(12, 4))
    tok = make_dataset(DataSpec("npz", path=_npz(tmp_path / "t.npz", x=tokens, y=tokens[:, ::-1])))
    assert tok.task == "tokens" and tok.vocab_size == 5 and tok.x_train.dtype == torch.int64
    np.testing.assert_array_equal(tok.y_train.numpy(), tok.x_train.numpy()[:, ::-1])


def test_npz_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data file not found: .*missing.npz"):
        make_dataset(DataSpec("npz", path=str(tmp_path / "missing.npz")))
    path = _npz(tmp_path / "k.npz", inputs=np.zeros((3, 2)), y=np.zeros(3, dtype=np.int64))
    with pytest.raises(DataError, match=r"k\.npz: no input array; .*found keys: 'inputs', 'y'"):
        make_dataset(DataSpec("npz", path=path))
    path = _npz(tmp_path / "m.npz", x=np.zeros((5, 2)), y=np.zeros(4, dtype=np.int64))
    with pytest.raises(DataError, match="'x' has 5 examples but 'y' has 4"):
        make_dataset(DataSpec("npz", path=path))
    bad = np.zeros((6, 2))
    bad[1, 0] = bad[4, 1] = np.nan
    bad[2, 1] = np.inf
    path = _npz(tmp_path / "n.npz", x=bad, y=np.zeros(6, dtype=np.int64))
    with pytest.raises(DataError, match=r"n\.npz: array 'x' holds 2 NaN and 1 Inf values"):
        make_dataset(DataSpec("npz", path=path))
    y_nan = np.array([0.0, np.nan, 1.0])
    path = _npz(tmp_path / "yn.npz", x=np.zeros((3, 1)), y=y_nan)
    with pytest.raises(DataError, match="array 'y' holds 1 NaN and 0 Inf"):
        make_dataset(DataSpec("npz", path=path))
    path = _npz(tmp_path / "one.npz", x=np.zeros((3, 1)), y=np.full(3, 4))
    with pytest.raises(DataError, match=r"one\.npz: 'y' holds a single class \(4\)"):
        make_dataset(DataSpec("npz", path=path))
    garbage = tmp_path / "g.npz"
    garbage.write_bytes(b"nope")
    with pytest.raises(DataError, match=r"cannot read .*g\.npz"):
        make_dataset(DataSpec("npz", path=str(garbage)))
