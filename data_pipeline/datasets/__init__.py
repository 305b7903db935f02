"""Dataset registry: a name → the reader and the files it reads under a data root.

Layout under the data root (as in /work/shared/datasets):
  ml-1m/ratings.dat (fallback: ml-1m/sequences.txt, no timestamps)   ml-20m/ratings.csv   ml-100k/u.data
  amazon-s3rec/Beauty.txt [+ amazon-s3rec/time_intervals/Beauty.txt]
  amazon-s3rec/Sports_and_Outdoors.txt [+ amazon-s3rec/time_intervals/Sports_and_Outdoors.txt]
  amazon-books/ratings_Books.csv
"""
from __future__ import annotations

import logging
from pathlib import Path

from data_pipeline import download as dl
from data_pipeline.datasets.amazon import read_amazon_ratings_csv, read_s3rec_sequences
from data_pipeline.datasets.events import DataFormatError, Sequences
from data_pipeline.datasets.movielens import read_ml1m_ratings, read_ml20m_ratings, read_ml100k

log = logging.getLogger(__name__)

DATASETS: dict[str, str] = {
    "ml-1m": "MovieLens-1M ratings (6,040 users, 3,706 movies, 1,000,209 ratings)",
    "ml-20m": "MovieLens-20M ratings (138,493 users, 26,744 movies, 20,000,263 ratings)",
    "ml-100k": "MovieLens-100K ratings (943 users, 1,682 movies, 100,000 ratings)",
    "beauty": "Amazon Beauty, S3Rec 5-core (22,363 users, 12,101 items, 198,502 actions)",
    "sports": "Amazon Sports_and_Outdoors, S3Rec 5-core (35,598 users, 18,357 items, 296,337 actions)",
    "books": "Amazon Books 2014 ratings, the HSTU reference's 5-core filter",
}

# generative-recommenders' AmazonDataProcessor asserts this item count for Books after its filter.
_REFERENCE_BOOKS_ITEMS = 695_762
_S3REC_FILES = {"beauty": "Beauty.txt", "sports": "Sports_and_Outdoors.txt"}


def _ml1m_fallback(root: Path) -> Path | None:
    """`ml-1m/sequences.txt` when it is there and `ratings.dat` is not: then ML-1M is read from it."""
    fallback = root / "ml-1m" / "sequences.txt"
    return fallback if fallback.is_file() and not (root / "ml-1m" / "ratings.dat").is_file() else None


def _load_ml1m(root: Path, download: bool) -> Sequences:
    ratings = root / "ml-1m" / "ratings.dat"
    fallback = _ml1m_fallback(root)
    if fallback is not None:
        f = dl.FILES["ml-1m"][0]
        log.warning(
            "\n%s\nML-1M: %s is missing, so ML-1M is read from %s, which has NO TIMESTAMPS.\n"
            "has_timestamps=False: HSTU's time bias is OFF and ML-1M results will not match the reference's\n"
            "time-bias numbers. For the real data put ratings.dat at %s (from %s).\n%s",
            "!" * 100, ratings, fallback, ratings, f.url, "!" * 100)
        return read_s3rec_sequences(fallback, dataset="ml-1m")
    dl.ensure_dataset("ml-1m", root, download=download)
    return read_ml1m_ratings(ratings)


def _load_s3rec(name: str, root: Path, download: bool) -> Sequences:
    dl.ensure_dataset(name, root, download=download)
    main = root / "amazon-s3rec" / _S3REC_FILES[name]
    intervals = root / "amazon-s3rec" / "time_intervals" / _S3REC_FILES[name]
    if not intervals.is_file():
        log.warning("%s: %s is missing; timestamps are all zero and the time bias is off", name, intervals)
        intervals = None
    return read_s3rec_sequences(main, dataset=name, time_intervals_path=intervals)


def _load_books(root: Path, download: bool) -> Sequences:
    dl.ensure_dataset("books", root, download=download)
    seqs = read_amazon_ratings_csv(root / "amazon-books" / "ratings_Books.csv", dataset="books")
    if seqs.num_items != _REFERENCE_BOOKS_ITEMS:
        log.warning("books: %d items after the 5-core filter; the reference reports %d (different file version?)",
                    seqs.num_items, _REFERENCE_BOOKS_ITEMS)
    return seqs


def present_source_files(name: str, data_root: str | Path) -> list[Path]:
    """The raw files `load_dataset(name, data_root, download=False)` would read now, of those present.

    Lets a cached store be compared with the data root it was built from (see `lrm.training.data`).
    """
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    root = Path(data_root)
    fallback = _ml1m_fallback(root) if name == "ml-1m" else None
    candidates = [fallback] if fallback is not None else [root / f.target for f in dl.FILES[name]]
    return [p for p in candidates if p.is_file()]


def load_dataset(name: str, data_root: str | Path, *, download: bool = True) -> Sequences:
    """Reads dataset `name` from `data_root`, downloading missing raw files first when `download` is true."""
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    root = Path(data_root)
    if name == "ml-1m":
        return _load_ml1m(root, download)
    if name in _S3REC_FILES:
        return _load_s3rec(name, root, download)
    if name == "books":
        return _load_books(root, download)
    dl.ensure_dataset(name, root, download=download)
    if name == "ml-20m":
        return read_ml20m_ratings(root / "ml-20m" / "ratings.csv")
    return read_ml100k(root / "ml-100k" / "u.data")


__all__ = ["DATASETS", "DataFormatError", "Sequences", "load_dataset", "present_source_files"]
