"""Where each public raw dataset comes from (URL + sha256) and `ensure_dataset`, which fetches what is missing.

A download goes to a temporary name, is checked against its sha256 and only then renamed into place, so a
failed or corrupt download never leaves a file behind. When files cannot be fetched (offline machines), the
error says exactly which file to put where and the URL to get it from.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 60


@dataclasses.dataclass(frozen=True)
class RawFile:
    """One file a reader needs, at `target` under the data root, and how to obtain it.

    For a member of a zip archive, `url`/`sha256` describe the archive and `member` names the file in it; the
    whole archive is extracted under the data root (its top folder matches the local layout).
    """

    target: str
    url: str
    sha256: str | None  # of the object at `url`; None: no published checksum could be found
    member: str | None = None
    member_sha256: str | None = None  # of the extracted file, where a dataset README gives it
    required: bool = True


_GROUPLENS = "https://files.grouplens.org/datasets/movielens"
_S3REC = "https://raw.githubusercontent.com/RUCAIBox/CIKM2020-S3Rec/2a81540ae18615d88ef88227b0c066e5b74781e5/data"
_TIMEWEAVER = "https://raw.githubusercontent.com/AraVio/TimeWeaver/38b4ff7243b527a4b8843090ce080ca533a9e3c6/data"

# Checksum sources:
# - MovieLens zips: tensorflow/datasets tensorflow_datasets/url_checksums/movielens.txt (sizes 5917549,
#   198702078, 4924029 bytes); the same values are pinned independently in several other public projects.
# - ml-100k u.data: /work/shared/datasets/ml-100k/README.md.
# - S3Rec and TimeWeaver files: the dataset READMEs (amazon-s3rec/README.md), re-checked against the git blobs at
#   the pinned commits.
# - ratings_Books.csv: no published sha256 found; it is downloaded unverified (with a warning).
FILES: dict[str, tuple[RawFile, ...]] = {
    "ml-1m": (
        RawFile("ml-1m/ratings.dat", f"{_GROUPLENS}/ml-1m.zip",
                "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20", member="ml-1m/ratings.dat"),
    ),
    "ml-20m": (
        RawFile("ml-20m/ratings.csv", f"{_GROUPLENS}/ml-20m.zip",
                "96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3", member="ml-20m/ratings.csv"),
    ),
    "ml-100k": (
        RawFile("ml-100k/u.data", f"{_GROUPLENS}/ml-100k.zip",
                "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229", member="ml-100k/u.data",
                member_sha256="06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490"),
    ),
    "beauty": (
        RawFile("amazon-s3rec/Beauty.txt", f"{_S3REC}/Beauty.txt",
                "226cce9c3105299ca0db9615d7d3fb32b3175e90da43100ae352599f0f0107b8"),
        RawFile("amazon-s3rec/time_intervals/Beauty.txt", f"{_TIMEWEAVER}/Beauty.txt",
                "ace27f3acb2528e9b7cfb8e5c459070f5888cfc3edab4cd219e595c5be1c87b8", required=False),
    ),
    "sports": (
        RawFile("amazon-s3rec/Sports_and_Outdoors.txt", f"{_S3REC}/Sports_and_Outdoors.txt",
                "2a095e0648872beb9982408958290f5d655db5be2911c3756b5446de9f0b8de2"),
        RawFile("amazon-s3rec/time_intervals/Sports_and_Outdoors.txt", f"{_TIMEWEAVER}/Sports_and_Outdoors.txt",
                "ddb1aa29e0934a3e7230022b8361785e7518e760180c492579c3c506b6bb5bfb", required=False),
    ),
    "books": (
        RawFile("amazon-books/ratings_Books.csv",
                "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/ratings_Books.csv", None),
    ),
}


class ChecksumError(ValueError):
    """Downloaded or extracted bytes do not match the recorded sha256."""


def sha256_file(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def download_file(url: str, dest: str | Path, sha256: str | None, *, timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Downloads `url` to `dest` via a temporary file in the same folder; checks sha256 before the rename."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            while block := response.read(1 << 20):
                out.write(block)
                h.update(block)
        got = h.hexdigest()
        if sha256 is not None and got != sha256:
            raise ChecksumError(f"sha256 mismatch for {url}: got {got}, want {sha256}")
        if sha256 is None:
            log.warning("%s has no recorded sha256; downloaded UNVERIFIED (sha256 %s)", url, got)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def extract_zip(archive: str | Path, root: str | Path) -> list[Path]:
    """Extracts every file of `archive` under `root` (each via a temp name + rename); keeps files already there."""
    root = Path(root).resolve()
    written = []
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            target = (root / info.filename).resolve()
            if root not in target.parents:
                raise ValueError(f"{archive}: member {info.filename!r} would be written outside {root}")
            if target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
            try:
                with os.fdopen(fd, "wb") as out, zf.open(info) as src:
                    shutil.copyfileobj(src, out, 1 << 20)
                os.replace(tmp_name, target)
            finally:
                Path(tmp_name).unlink(missing_ok=True)
            written.append(target)
    return written


def _fetch(f: RawFile, root: Path) -> None:
    """Brings one missing file into place (downloading and extracting its archive when it is a member)."""
    target = root / f.target
    if f.member is None:
        download_file(f.url, target, f.sha256)
    else:
        fd, tmp_name = tempfile.mkstemp(prefix=".archive.", suffix=".zip", dir=root)
        os.close(fd)
        try:
            download_file(f.url, tmp_name, f.sha256)
            extract_zip(tmp_name, root)
        finally:
            Path(tmp_name).unlink(missing_ok=True)
        if not target.is_file():
            raise FileNotFoundError(f"{f.url} has no member {f.member}")
    if f.member_sha256 is not None and sha256_file(target) != f.member_sha256:
        target.unlink()
        raise ChecksumError(f"{target}: sha256 differs from the published {f.member_sha256}; removed")


def _instructions(f: RawFile, root: Path) -> str:
    what = f"  {root / f.target}\n    from {f.url}"
    if f.member is not None:
        what += f" (extract {f.member} from the zip into {root})"
    if f.sha256 is not None:
        what += f"\n    sha256 of the download: {f.sha256}"
    return what


def missing_files(name: str, data_root: str | Path) -> list[RawFile]:
    """The files of dataset `name` that are not under `data_root`."""
    root = Path(data_root)
    return [f for f in _files(name) if not (root / f.target).is_file()]


def _files(name: str) -> tuple[RawFile, ...]:
    if name not in FILES:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(FILES)}")
    return FILES[name]


def ensure_dataset(name: str, data_root: str | Path, *, download: bool = True) -> Path:
    """Makes sure the raw files of `name` are under `data_root`; returns the folder of its first file.

    Missing files are downloaded when `download` is true. Optional files (e.g. Amazon time intervals) that stay
    missing only give a warning; a required file that stays missing raises FileNotFoundError saying which file
    to put where and where to get it.
    """
    root = Path(data_root)
    files = _files(name)
    errors: dict[str, str] = {}
    missing = missing_files(name, root)
    if missing and download:
        root.mkdir(parents=True, exist_ok=True)
        for f in missing:
            if (root / f.target).is_file():  # an earlier archive brought it
                continue
            try:
                log.info("%s: downloading %s", name, f.url)
                _fetch(f, root)
            except Exception as e:  # noqa: BLE001 - every failure becomes the instructions below
                errors[f.target] = f"{type(e).__name__}: {e}"
        missing = missing_files(name, root)
    for f in missing:
        if not f.required:
            log.warning("%s: optional file %s is missing%s; get it from %s", name, root / f.target,
                        f" ({errors[f.target]})" if f.target in errors else "", f.url)
    required = [f for f in missing if f.required]
    if required:
        tried = "download failed" if download else "downloads disabled"
        lines = [f"dataset {name!r}: missing raw file(s) under {root} ({tried}). Put them here:"]
        for f in required:
            lines.append(_instructions(f, root))
            if f.target in errors:
                lines.append(f"    (download error: {errors[f.target]})")
        raise FileNotFoundError("\n".join(lines))
    return (root / files[0].target).parent
