"""Data: datasets by name, partitioning into clients, member / validation / audit splits (seeded, pure numpy)."""

from fedunlearn.data.datasets import DATASETS, Dataset, describe_datasets, load_dataset
from fedunlearn.data.partition import PARTITIONERS, partition_indices
from fedunlearn.data.splits import (
    Partitions,
    load_partitions,
    make_partitions,
    save_partitions,
    split_member_holdout,
    split_validation_audit,
)

__all__ = [
    "DATASETS",
    "PARTITIONERS",
    "Dataset",
    "Partitions",
    "describe_datasets",
    "load_dataset",
    "load_partitions",
    "make_partitions",
    "partition_indices",
    "save_partitions",
    "split_member_holdout",
    "split_validation_audit",
]
