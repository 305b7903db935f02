"""Opens the preprocessed sequence store a config names, building it once from raw files when missing."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from data_pipeline.datasets import load_dataset
from data_pipeline.store import SequenceStore, write_store


def resolve_data_root(data_cfg) -> Path:
    root = data_cfg.data_root or os.environ.get("LRM_DATA_DIR", "")
    if not root:
        raise ValueError(
            "no data root: set --config.data.data_root=DIR or the LRM_DATA_DIR environment variable "
            "(a folder holding e.g. amazon-s3rec/Beauty.txt; see README 'Data')")
    return Path(root).expanduser()


def store_path(data_cfg) -> Path:
    return Path(data_cfg.store_root) / f"{data_cfg.dataset}-{data_cfg.protocol}"


def open_or_build_store(data_cfg) -> SequenceStore:
    """The store for (dataset, protocol); preprocesses it from the data root the first time."""
    path = store_path(data_cfg)
    if not (path / "metadata.json").exists():
        root = resolve_data_root(data_cfg)
        logging.info("building sequence store %s from %s", path, root)
        seqs = load_dataset(data_cfg.dataset, root, download=data_cfg.download)
        write_store(seqs, path, protocol=data_cfg.protocol)
    store = SequenceStore.open(path)
    if store.protocol != data_cfg.protocol:
        raise ValueError(f"store {path} was written for protocol {store.protocol!r}, "
                         f"config asks for {data_cfg.protocol!r}")
    if store.dataset != data_cfg.dataset:
        raise ValueError(f"store {path} holds dataset {store.dataset!r}, config asks for {data_cfg.dataset!r}")
    return store
