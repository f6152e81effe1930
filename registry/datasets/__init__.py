"""Data sets: the built-in ones (digits, patches, shapes, 2-D toys) and users' files."""

from registry.contract.dataset import DataError, Dataset, fingerprint
from registry.datasets.builtin import (
    BUILTIN_DATASETS,
    LABELLED_DATASETS,
    load_dataset,
    load_digits,
    load_patches,
    load_patches_rgb,
    load_shapes,
    load_toy,
)
from registry.datasets.files import infer_levels, load_user_data, numeric_rows, read_array, read_labels
from registry.datasets.toys import TOYS

__all__ = [
    "BUILTIN_DATASETS",
    "LABELLED_DATASETS",
    "TOYS",
    "DataError",
    "Dataset",
    "fingerprint",
    "infer_levels",
    "load_dataset",
    "load_digits",
    "load_patches",
    "load_patches_rgb",
    "load_shapes",
    "load_toy",
    "load_user_data",
    "numeric_rows",
    "read_array",
    "read_labels",
]
