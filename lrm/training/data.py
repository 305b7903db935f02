"""Opens the preprocessed sequence store a config names, building it once from raw files when missing."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from data_pipeline.datasets import DATASETS, load_dataset, present_source_files
from data_pipeline.datasets.rawtext import source_key
from data_pipeline.download import sha256_file
from data_pipeline.store import SequenceStore, write_store


def _data_root_setting(data_cfg) -> str:
    return data_cfg.data_root or os.environ.get("LRM_DATA_DIR", "")


def resolve_data_root(data_cfg) -> Path:
    root = _data_root_setting(data_cfg)
    if not root:
        raise ValueError(
            "no data root: set --config.data.data_root=DIR or the LRM_DATA_DIR environment variable "
            "(a folder holding e.g. amazon-s3rec/Beauty.txt; see README 'Data')")
    return Path(root).expanduser()


def store_path(data_cfg) -> Path:
    return Path(data_cfg.store_root) / f"{data_cfg.dataset}-{data_cfg.protocol}"


class StaleStoreError(ValueError):
    """A cached store was built from other raw files than the data root holds now."""


def check_store_sources(store: SequenceStore, path: Path, root: Path) -> None:
    """Raises StaleStoreError when the raw files under `root` are not the ones `store` was built from.

    The store is a cache keyed only by (dataset, protocol): without this, a store built from ML-1M's
    `sequences.txt` fallback (no timestamps) would keep being used after `ratings.dat` is put in place, or a
    store from another data root would be read silently. A root holding none of the dataset's files (only the
    stores were copied, e.g. to a cluster) is not compared.
    """
    present = present_source_files(store.dataset, root)
    if not present:
        logging.info("data root %s holds no raw %s files; using store %s as it is", root, store.dataset, path)
        return
    now = {source_key(p): p for p in present}
    recorded = dict(store.metadata.get("source_files", {}))
    problems = [f"{k} is under the data root but the store was not built from it" for k in sorted(set(now) - set(recorded))]
    problems += [f"{k} was read to build the store but is not under the data root" for k in sorted(set(recorded) - set(now))]
    problems += [f"{now[k]} has sha256 {digest}, the store recorded {recorded[k]}"
                 for k in sorted(set(now) & set(recorded)) if (digest := sha256_file(now[k])) != recorded[k]]
    if problems:
        raise StaleStoreError(
            f"sequence store {path} does not match the raw {store.dataset} files under {root}:\n  "
            + "\n  ".join(problems)
            + f"\nRebuild it: lrm-preprocess --dataset {store.dataset} --data_root {root} --out {path} "
            f"--protocol {store.protocol} --overwrite (or delete {path}, or set --config.data.store_root to "
            "another folder).")


def open_or_build_store(data_cfg) -> SequenceStore:
    """The store for (dataset, protocol); preprocesses it from the data root the first time.

    An existing store is checked against the raw files under the data root (when one is set and holds them).
    Runs started together (a sweep, two seeds) may all find it missing: the first to finish writing wins and
    the others use its store, checked like any cached one.
    """
    path = store_path(data_cfg)
    existed = (path / "metadata.json").exists()
    if not existed:
        root = resolve_data_root(data_cfg)
        logging.info("building sequence store %s from %s", path, root)
        seqs = load_dataset(data_cfg.dataset, root, download=data_cfg.download)
        try:
            write_store(seqs, path, protocol=data_cfg.protocol)
        except FileExistsError:
            if not (path / "metadata.json").exists():
                raise
            logging.info("sequence store %s was built by another process meanwhile; using it", path)
            existed = True
    store = SequenceStore.open(path)
    root_setting = _data_root_setting(data_cfg)
    if existed and root_setting and store.dataset in DATASETS:  # a fresh build was just read from these files
        check_store_sources(store, path, Path(root_setting).expanduser())
    if store.protocol != data_cfg.protocol:
        raise ValueError(f"store {path} was written for protocol {store.protocol!r}, "
                         f"config asks for {data_cfg.protocol!r}")
    if store.dataset != data_cfg.dataset:
        raise ValueError(f"store {path} holds dataset {store.dataset!r}, config asks for {data_cfg.dataset!r}")
    return store
