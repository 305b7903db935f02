"""Pieces every raw-file reader shares: reading a file (plain or .gz) with its checksum, a strict vectorised
parser for delimited numeric tables, and the stable per-user sort into CSR.

The parser is two-speed: a numpy pass validates and parses whole chunks of lines; only when it sees a problem
does a per-line Python scan run over that chunk, to name the first bad line and say what is wrong with it.
"""
from __future__ import annotations

import gzip
import hashlib
import re
import warnings
import zlib
from pathlib import Path

import numpy as np

from data_pipeline.datasets.events import DataFormatError, Sequences

MAX_DIGITS = 15  # longest integer field; keeps every value exact in float64 as well as int64
INT32_MAX = np.iinfo(np.int32).max
_CHUNK_BYTES = 64 << 20
_SUB_SEP = b"\x1f"  # stands in for a multi-byte separator during the fast pass


def source_key(path: str | Path) -> str:
    """Key of a file in `Sequences.source_files`: parent folder and name (two sources may share a name)."""
    p = Path(path)
    return f"{p.parent.name}/{p.name}"


def read_source(path: str | Path) -> tuple[bytes, str]:
    """Returns (text bytes, sha256 of the bytes on disk); a `.gz` file is decompressed after hashing."""
    p = Path(path)
    raw = p.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if p.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataFormatError(p, None, f"not a readable gzip file ({e})") from e
    if b"\r\n" in raw:
        raw = raw.replace(b"\r\n", b"\n")
    return raw, digest


def split_header(path: str | Path, data: bytes, header: bytes | None) -> tuple[bytes, int]:
    """Checks and removes the header line; returns (body, line number of the body's first line)."""
    if header is None:
        return data, 1
    first, _, body = data.partition(b"\n")
    if first != header:
        got = first[:80].decode(errors="replace")
        raise DataFormatError(path, 1, f"expected header {header.decode()!r}, got {got!r}")
    return body, 2


def iter_line_chunks(data: bytes, first_line: int, chunk_bytes: int | None = None):
    """Yields (chunk, line number of its first line): whole lines, trailing newlines of the file removed.

    An empty line inside the data stays in (and is an error for the parsers); empty lines at the very end
    carry no data and are ignored.
    """
    chunk_bytes = chunk_bytes or _CHUNK_BYTES
    data = data.rstrip(b"\n")
    if not data:
        return
    start, line = 0, first_line
    while start < len(data):
        end = data.rfind(b"\n", start, start + chunk_bytes) if start + chunk_bytes < len(data) else len(data)
        if end <= start:  # one line longer than a chunk
            end = data.find(b"\n", start + chunk_bytes)
            end = len(data) if end < 0 else end
        chunk = data[start:end]
        yield chunk, line
        line += chunk.count(b"\n") + 1
        start = end + 1


def _byte_table(chars: bytes) -> np.ndarray:
    table = np.zeros(256, dtype=bool)
    table[np.frombuffer(chars, np.uint8)] = True
    return table


_DIGITS = b"0123456789"
_INT_RE = re.compile(rf"[0-9]{{1,{MAX_DIGITS}}}")
_DEC_RE = re.compile(rf"[0-9]{{1,{MAX_DIGITS}}}(\.[0-9]{{1,{MAX_DIGITS}}})?")
_NEG_RE = re.compile(r"-[0-9.]+")


def _describe_sep(sep: bytes) -> str:
    return {b"\t": "tabs", b",": "commas", b" ": "spaces"}.get(sep, repr(sep.decode()))


def _scan_numeric_lines(path, chunk: bytes, first_line: int, sep: bytes, names, decimal) -> None:
    """Slow path: raises DataFormatError for the first malformed line of `chunk`."""
    for i, line in enumerate(chunk.split(b"\n")):
        line_no = first_line + i
        if not line:
            raise DataFormatError(path, line_no, "empty line")
        fields = line.split(sep)
        if len(fields) != len(names):
            raise DataFormatError(
                path, line_no, f"expected {len(names)} fields ({', '.join(names)}) separated by "
                f"{_describe_sep(sep)}, got {len(fields)}: {line[:80].decode(errors='replace')!r}")
        for name, is_dec, raw in zip(names, decimal, fields):
            text = raw.decode(errors="replace")
            if _NEG_RE.fullmatch(text):
                raise DataFormatError(path, line_no, f"{name} is negative: {text}")
            pattern = _DEC_RE if is_dec else _INT_RE
            if not pattern.fullmatch(text):
                kind = "number" if is_dec else f"non-negative integer of at most {MAX_DIGITS} digits"
                raise DataFormatError(path, line_no, f"{name} is not a {kind}: {text[:40]!r}")


def _fast_parse_chunk(chunk: bytes, sep: bytes, decimal: tuple[bool, ...]) -> np.ndarray | None:
    """Vectorised validate + parse of a chunk of lines; None means "something is wrong, scan it"."""
    ncols = len(decimal)
    if len(sep) > 1:
        if _SUB_SEP in chunk:
            return None
        chunk = chunk.replace(sep, _SUB_SEP)
        sep = _SUB_SEP
    any_dec = any(decimal)
    b = np.frombuffer(chunk, np.uint8)
    allowed = _byte_table(_DIGITS + sep + b"\n" + (b"." if any_dec else b""))
    if not allowed[b].all():
        return None
    is_nl = b == 10
    delims = np.flatnonzero(is_nl | (b == sep[0]))
    # Empty fields (and empty lines): two delimiters in a row, or one at either end.
    if delims.size and (delims[0] == 0 or delims[-1] == b.size - 1 or np.any(np.diff(delims) == 1)):
        return None
    newlines = np.flatnonzero(is_nl)
    n_lines = newlines.size + 1
    if delims.size != n_lines * ncols - 1:
        return None
    seps = np.flatnonzero(b == sep[0])
    per_line = np.bincount(np.searchsorted(newlines, seps), minlength=n_lines)
    if np.any(per_line != ncols - 1):
        return None
    bounds = np.concatenate([[-1], delims, [b.size]])
    field_len = np.diff(bounds) - 1
    max_len = np.where(np.tile(np.asarray(decimal), n_lines), 2 * MAX_DIGITS + 1, MAX_DIGITS)
    if np.any(field_len > max_len):
        return None
    if any_dec:
        dots = np.flatnonzero(b == ord("."))
        if dots.size:
            field = np.searchsorted(delims, dots)  # global field index of each '.'
            digit = _byte_table(_DIGITS)
            if (not np.asarray(decimal)[field % ncols].all() or np.any(np.diff(field) == 0)
                    or dots[0] == 0 or dots[-1] == b.size - 1
                    or not digit[b[dots - 1]].all() or not digit[b[dots + 1]].all()):
                return None
    text = chunk.translate(bytes.maketrans(sep + b"\n", b"  "))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        try:
            values = np.fromstring(text, dtype=np.float64 if any_dec else np.int64, sep=" ")
        except (ValueError, DeprecationWarning):
            return None
    if values.size != n_lines * ncols:
        return None
    return values.reshape(n_lines, ncols)


def parse_numeric_table(
    path: str | Path, data: bytes, *, sep: bytes, names: tuple[str, ...], decimal: tuple[bool, ...] | None = None,
    header: bytes | None = None,
) -> tuple[dict[str, np.ndarray], int]:
    """Parses a delimited table of non-negative numbers, one record per line.

    Returns ({column name: values}, line number of the first record). Integer columns come back as int64,
    decimal columns (which allow one '.') as float64. Any malformed line raises DataFormatError with its
    line number.
    """
    decimal = decimal or (False,) * len(names)
    body, first_line = split_header(path, data, header)
    parts = []
    for chunk, line in iter_line_chunks(body, first_line):
        table = _fast_parse_chunk(chunk, sep, decimal)
        if table is None:
            _scan_numeric_lines(path, chunk, line, sep, names, decimal)
            raise DataFormatError(path, None, f"malformed near line {line} (fast check failed, scan found nothing)")
        parts.append(table)
    if not parts:
        raise DataFormatError(path, None, "no data lines")
    table = np.concatenate(parts) if len(parts) > 1 else parts[0]
    cols = {}
    for j, (name, is_dec) in enumerate(zip(names, decimal)):
        col = table[:, j]
        cols[name] = col if is_dec else col.astype(np.int64)
    return cols, first_line


def check_range(path, values: np.ndarray, lo, hi, first_line: int, what: str) -> None:
    """Raises DataFormatError naming the first record whose value lies outside [lo, hi]."""
    bad = np.flatnonzero((values < lo) | (values > hi))
    if bad.size:
        i = int(bad[0])
        v = values[i]
        v = v.item() if hasattr(v, "item") else v
        raise DataFormatError(path, first_line + i, f"{what} {v} is out of range [{lo}, {hi}]")


def sequences_from_events(
    dataset: str,
    users: np.ndarray,
    items: np.ndarray,
    times: np.ndarray,
    ratings: np.ndarray | None,
    *,
    num_items: int,
    item_raw_ids: np.ndarray | None,
    source_files: dict[str, str],
    has_timestamps: bool = True,
    user_labels: np.ndarray | None = None,
) -> Sequences:
    """Groups flat events by user (rows in ascending `users` order) and sorts each user's events by time.

    Both sorts are STABLE: events with equal timestamps keep their order in the input (file order).
    `user_labels[users]` gives the id stored for a row when `users` are codes rather than source ids.
    """
    order = np.argsort(times, kind="stable")
    order = order[np.argsort(users[order], kind="stable")]
    users_sorted = users[order]
    starts = np.flatnonzero(np.concatenate([[True], users_sorted[1:] != users_sorted[:-1]]))
    row_users = users_sorted[starts]
    offsets = np.append(starts, users_sorted.size).astype(np.int64)
    return Sequences(
        dataset=dataset,
        user_ids=row_users if user_labels is None else user_labels[row_users],
        offsets=offsets,
        item_ids=items[order].astype(np.int32),
        timestamps=times[order].astype(np.int64),
        ratings=None if ratings is None else ratings[order].astype(np.int8),
        num_items=int(num_items),
        has_timestamps=has_timestamps,
        item_raw_ids=item_raw_ids,
        source_files=source_files,
    )
