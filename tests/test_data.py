"""Datasets: digits splits, toy densities that integrate to one, user files with clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from registry.datasets import (
    DataError,
    Dataset,
    load_dataset,
    load_digits,
    load_shapes,
    load_user_data,
    read_array,
)
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


# Labels (issue 27): conditional data keeps each row's class next to it.


def test_digits_conditional_labels_follow_their_rows():
    from sklearn.datasets import load_digits as sk_digits

    plain, ds = load_digits(), load_digits(conditional=True)
    sk = sk_digits()
    # Duplicated images exist in digits, so an image maps to the set of its targets.
    targets: dict[bytes, set[int]] = {}
    for image, target in zip(sk.data.astype(np.float32), sk.target, strict=True):
        targets.setdefault(image.tobytes(), set()).add(int(target))
    for split in ("train", "validation", "test"):
        rows, y = getattr(ds, split), ds.labels[split]
        assert np.array_equal(rows, getattr(plain, split))  # the rows do not move
        assert y.dtype == np.int64 and y.shape == (len(rows),)
        assert all(int(label) in targets[row.tobytes()] for row, label in zip(rows, y, strict=True))
    assert ds.fingerprint == plain.fingerprint and plain.labels is None and plain.classes is None
    info = ds.describe()
    assert info["classes"] == ds.classes == 10
    assert info["class_names"] == [str(d) for d in range(10)]
    prior = np.bincount(ds.labels["train"], minlength=10) / len(ds.train)
    assert sum(info["class_prior"]) == pytest.approx(1.0)
    assert np.allclose(info["class_prior"], prior) and np.allclose(ds.class_prior(), prior)
    assert len(info["labels_fingerprint"]) == 64
    assert "classes" not in plain.describe()
    assert load_dataset("digits", conditional=True).classes == 10


def test_shapes_conditional_label_is_the_shape_factor():
    from registry.datasets.shapes import SHAPES

    plain, ds = load_shapes(), load_shapes(conditional=True)
    assert ds.class_names == SHAPES and ds.classes == 3
    for split in ("train", "validation", "test"):
        assert np.array_equal(getattr(ds, split), getattr(plain, split))
        assert np.array_equal(ds.labels[split], ds.factors[split][:, 0])


@pytest.mark.parametrize("name", ["moons", "patches", "patches-rgb"])
def test_conditional_refused_on_a_builtin_without_labels(name):
    with pytest.raises(DataError, match=rf"'{name}' has no labels; --conditional applies to digits, shapes"):
        load_dataset(name, conditional=True)


def test_label_files_refused_on_a_builtin(tmp_path):
    np.save(tmp_path / "y.npy", np.zeros(10, dtype=int))
    for kwargs in ({"labels": tmp_path / "y.npy"}, {"validation_labels": tmp_path / "y.npy"}):
        with pytest.raises(DataError, match="--labels applies to user files; use --conditional"):
            load_dataset("digits", **kwargs)


def _labelled_rows(n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose first column is their index, and labels that can be read back from a row."""
    x = np.stack([np.arange(n), np.arange(n) % 7], 1).astype(float) + 0.5
    return x, np.arange(n) % 3


def test_user_labels_follow_their_rows_into_validation(tmp_path):
    x, y = _labelled_rows()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    plain = load_user_data(tmp_path / "x.npy")
    ds = load_dataset(str(tmp_path / "x.npy"), labels=tmp_path / "y.npy")
    assert ds.classes == 3 and ds.class_names == ()
    assert ds.describe()["class_names"] == ["0", "1", "2"]
    for split in ("train", "validation", "test"):
        rows = getattr(ds, split)
        assert np.array_equal(rows, getattr(plain, split))
        assert np.array_equal(ds.labels[split], y[(rows[:, 0] - 0.5).astype(int)])
    # The same labels as a one-column CSV with a header, and as an .npz array named y of shape (n, 1).
    (tmp_path / "y.csv").write_text("label\n" + "\n".join(map(str, y)))
    np.savez(tmp_path / "y.npz", y=y[:, None])
    for other in ("y.csv", "y.npz"):
        again = load_user_data(tmp_path / "x.npy", labels=tmp_path / other)
        assert all(np.array_equal(again.labels[s], ds.labels[s]) for s in ds.labels)


def test_user_labels_with_a_separate_validation_file(tmp_path):
    x, y = _labelled_rows()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    np.save(tmp_path / "val.npy", x[:8])
    np.save(tmp_path / "val_y.npy", y[:8])
    ds = load_user_data(
        tmp_path / "x.npy",
        labels=tmp_path / "y.npy",
        validation=tmp_path / "val.npy",
        validation_labels=tmp_path / "val_y.npy",
    )
    assert np.array_equal(ds.labels["train"], y) and np.array_equal(ds.labels["validation"], y[:8])
    assert ds.classes == 3
    # A validation class that training never sees: K counts it, and the train split must hold it.
    np.save(tmp_path / "val_y.npy", np.r_[y[:7], 3])
    with pytest.raises(DataError, match="class\\(es\\) 3 never occur in the training split"):
        load_user_data(
            tmp_path / "x.npy",
            labels=tmp_path / "y.npy",
            validation=tmp_path / "val.npy",
            validation_labels=tmp_path / "val_y.npy",
        )


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.arange(60) % 3 + 0.5, "non-integer label 0.5 at row 0"),
        (np.r_[np.arange(59) % 3, -1], "negative label -1 at row 59"),
        (np.arange(59) % 3, "59 labels, but .*x.npy has 60 rows"),
        (np.zeros((60, 2), dtype=int), "one integer label per row expected"),
        (np.array(["a"] * 60), "labels must be integers"),
    ],
)
def test_bad_label_files_are_refused_by_file_and_flag(tmp_path, labels, message):
    x, _ = _labelled_rows()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", labels)
    with pytest.raises(DataError, match=rf"y\.npy \(--labels\): {message}"):
        load_user_data(tmp_path / "x.npy", labels=tmp_path / "y.npy")


def test_bad_validation_labels_name_their_flag(tmp_path):
    x, y = _labelled_rows()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    np.save(tmp_path / "val.npy", x[:8])
    np.save(tmp_path / "val_y.npy", y[:5])
    with pytest.raises(
        DataError, match=r"val_y\.npy \(--validation-labels\): 5 labels, but .*val\.npy has 8 rows"
    ):
        load_user_data(
            tmp_path / "x.npy",
            labels=tmp_path / "y.npy",
            validation=tmp_path / "val.npy",
            validation_labels=tmp_path / "val_y.npy",
        )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            {"labels": "y.npy", "validation": "val.npy"},
            "needs --validation-labels FILE when --labels is given",
        ),
        ({"validation": "val.npy", "validation_labels": "y.npy"}, "--validation-labels needs --labels"),
        (
            {"labels": "y.npy", "validation_labels": "y.npy"},
            "--validation-labels goes with --validation FILE",
        ),
        ({"conditional": True}, "--conditional on a user file needs --labels FILE"),
    ],
)
def test_label_flags_come_in_pairs(tmp_path, flags, message):
    x, y = _labelled_rows()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    np.save(tmp_path / "val.npy", x[:8])
    kwargs = {k: (v if isinstance(v, bool) else tmp_path / v) for k, v in flags.items()}
    with pytest.raises(DataError, match=message):
        load_dataset(str(tmp_path / "x.npy"), **kwargs)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.arange(60) % 3 * 2, r"class\(es\) 1, 3 never occur in the training split"),
        (np.r_[np.zeros(59, dtype=int), 10**9], r"class\(es\) 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 never occur"),
        (np.zeros(60, dtype=int), "at least 2 classes"),
    ],
)
def test_labels_with_gaps_or_one_class_are_refused(tmp_path, labels, message):
    x, _ = _labelled_rows()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", labels)
    with pytest.raises(DataError, match=message):
        load_user_data(tmp_path / "x.npy", labels=tmp_path / "y.npy")


def test_dataset_refuses_labels_that_do_not_fit_its_rows():
    x = np.zeros((4, 2), dtype=np.float32)
    good = np.array([0, 1, 0, 1])
    with pytest.raises(DataError, match="the validation split has 4 rows but shape \\[3\\] labels"):
        Dataset("d", x, x, x, labels={"train": good, "validation": good[:3], "test": good})
    with pytest.raises(DataError, match="the test split has 4 rows but none labels"):
        Dataset("d", x, x, x, labels={"train": good, "validation": good})
    with pytest.raises(DataError, match=r"must be integers 0\.\.K-1"):
        Dataset("d", x, x, x, labels={"train": good, "validation": good - 1, "test": good})
    with pytest.raises(DataError, match="3 classes but 2 class names"):
        Dataset(
            "d",
            x,
            x,
            x,
            labels={s: np.array([0, 1, 2, 0]) for s in ("train", "validation", "test")},
            class_names=("a", "b"),
        )
