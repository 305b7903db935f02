"""Amazon readers: S3Rec sequence files (Beauty, Sports; also ML-1M `sequences.txt`) and the raw 2014 ratings
CSV (Books) with the reference's 5-core filter.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from data_pipeline.datasets.events import DataFormatError, Sequences, from_user_lists
from data_pipeline.datasets.rawtext import (
    INT32_MAX,
    MAX_DIGITS,
    iter_line_chunks,
    read_source,
    sequences_from_events,
    source_key,
)

log = logging.getLogger(__name__)


def _ascii_lines(path: Path, data: bytes) -> list[str]:
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as e:
        line_no = data.count(b"\n", 0, e.start) + 1
        raise DataFormatError(path, line_no, f"non-ASCII byte {data[e.start]:#x}") from e
    lines = text.rstrip("\n").split("\n")
    return [] if lines == [""] else lines


def _int_tokens(path: Path, line_no: int, text: str, what: str) -> list[int]:
    """Space-separated non-negative integers, exactly one space between them."""
    tokens = text.split(" ")
    for tok in tokens:
        if not tok:
            raise DataFormatError(path, line_no, f"empty field in {what} (double, leading or trailing space)")
        if not (tok.isdigit() and len(tok) <= MAX_DIGITS):
            kind = "negative" if tok.startswith("-") else "not a non-negative integer"
            raise DataFormatError(path, line_no, f"{what}: {tok[:40]!r} is {kind}")
    return [int(t) for t in tokens]


def _parse_s3rec_line(path: Path, line_no: int, line: str) -> tuple[int, np.ndarray]:
    if not line:
        raise DataFormatError(path, line_no, "empty line")
    values = _int_tokens(path, line_no, line, "user and item ids")
    user, items = values[0], np.asarray(values[1:], dtype=np.int64)
    if items.size == 0:
        raise DataFormatError(path, line_no, f"user {user} has an empty history")
    bad = np.flatnonzero((items < 1) | (items > INT32_MAX))
    if bad.size:
        raise DataFormatError(path, line_no, f"item id {items[bad[0]]} is out of range [1, {INT32_MAX}] (0 is padding)")
    return user, items


def _read_time_intervals(
    path: Path, main_path: Path, rows: dict[int, tuple[int, np.ndarray]]
) -> tuple[dict[int, np.ndarray], str]:
    """Per user: cumulative seconds since the user's first event, from `user items...<TAB>dt_1 ... dt_n`.

    Returns (times per user, sha256 of the file).
    """
    data, digest = read_source(path)
    times: dict[int, np.ndarray] = {}
    for i, line in enumerate(_ascii_lines(path, data)):
        line_no = i + 1
        parts = line.split("\t")
        if len(parts) != 2:
            raise DataFormatError(path, line_no, f"expected 'user items...<TAB>intervals', found {len(parts) - 1} tabs")
        user, items = _parse_s3rec_line(path, line_no, parts[0])
        if user not in rows:
            raise DataFormatError(path, line_no, f"user {user} does not appear in {main_path}")
        if user in times:
            raise DataFormatError(path, line_no, f"user {user} appears twice")
        main_line, main_items = rows[user]
        if not np.array_equal(items, main_items):
            raise DataFormatError(path, line_no, f"items of user {user} differ from {main_path} line {main_line}")
        dts = np.asarray(_int_tokens(path, line_no, parts[1], "time intervals"), dtype=np.int64)
        if dts.size != items.size:
            raise DataFormatError(path, line_no, f"{dts.size} time intervals for {items.size} items")
        if dts[0] != 0:
            raise DataFormatError(path, line_no, f"first time interval must be 0 (the first event), got {dts[0]}")
        times[user] = np.cumsum(dts)
    missing = [u for u in rows if u not in times]
    if missing:
        u = missing[0]
        raise DataFormatError(main_path, rows[u][0], f"user {u} has no line in {path} ({len(missing)} users missing)")
    return times, digest


def read_s3rec_sequences(path: str | Path, *, dataset: str, time_intervals_path: str | Path | None = None) -> Sequences:
    """S3Rec format, one line per user: `user item_1 ... item_n`, items already in time order.

    Item ids are kept (num_items = largest id). With `time_intervals_path` (TimeWeaver format, seconds since the
    user's previous interaction, first = 0) the timestamps are their cumulative sum, i.e. seconds since the
    user's first event, and the item sequences must equal this file's. Without it timestamps are all zero and
    has_timestamps is False. Rows are in ascending user id order; each user's file order is kept.
    """
    path = Path(path)
    data, digest = read_source(path)
    rows: dict[int, tuple[int, np.ndarray]] = {}
    for i, line in enumerate(_ascii_lines(path, data)):
        user, items = _parse_s3rec_line(path, i + 1, line)
        if user in rows:
            raise DataFormatError(path, i + 1, f"user {user} already has a line ({rows[user][0]})")
        rows[user] = (i + 1, items)
    if not rows:
        raise DataFormatError(path, None, "no data lines")
    sources = {source_key(path): digest}
    times = None
    if time_intervals_path is not None:
        tpath = Path(time_intervals_path)
        times, sources[source_key(tpath)] = _read_time_intervals(tpath, path, rows)
    users = sorted(rows)
    item_lists = [rows[u][1] for u in users]
    return from_user_lists(
        dataset, users, item_lists, None if times is None else [times[u] for u in users], None,
        num_items=max(int(x.max()) for x in item_lists), item_raw_ids=None, source_files=sources,
    )


# ---------------------------------------------------------------------------------------------------------------
# Raw Amazon 2014 ratings CSV (Books): `user,item,rating,timestamp`, string ids, no header.


def _fixed_width(b: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The byte strings b[starts[i]:ends[i]] as one fixed-width `S` array (loops over columns, not rows)."""
    lens = ends - starts
    width = int(lens.max())
    out = np.zeros((starts.size, width), np.uint8)
    for j in range(width):
        m = lens > j
        out[m, j] = b[starts[m] + j]
    return out.view(f"S{width}").ravel()


MAX_ID_BYTES = 256  # Amazon user ids and ASINs are ~10-30 bytes; longer means a broken line
_DIGIT = np.zeros(256, bool)
_DIGIT[np.frombuffer(b"0123456789", np.uint8)] = True


def _scan_csv_lines(path: Path, chunk: bytes, first_line: int) -> None:
    """Slow path: raises DataFormatError for the first malformed line of `chunk`."""
    for i, line in enumerate(chunk.split(b"\n")):
        line_no = first_line + i
        if not line:
            raise DataFormatError(path, line_no, "empty line")
        if b"\0" in line:
            raise DataFormatError(path, line_no, "NUL byte in line")
        fields = line.split(b",")
        if len(fields) != 4:
            raise DataFormatError(path, line_no, f"expected 4 comma-separated fields (user,item,rating,timestamp), "
                                  f"got {len(fields)}: {line[:80].decode(errors='replace')!r}")
        user, item, rating, ts = (f.decode(errors="replace") for f in fields)
        if not user or not item:
            raise DataFormatError(path, line_no, "empty user or item id")
        if max(len(fields[0]), len(fields[1])) > MAX_ID_BYTES:
            raise DataFormatError(path, line_no, f"user or item id longer than {MAX_ID_BYTES} bytes")
        try:
            r = float(rating)
        except ValueError:
            raise DataFormatError(path, line_no, f"rating {rating[:40]!r} is not a number") from None
        if not (rating.replace(".", "", 1).isdigit() and r == int(r) and 1 <= r <= 5):
            raise DataFormatError(path, line_no, f"rating {rating!r} is not an integer in [1, 5]")
        if ts.startswith("-") and ts[1:].isdigit():
            raise DataFormatError(path, line_no, f"timestamp is negative: {ts}")
        if not (ts.isdigit() and len(ts) <= MAX_DIGITS):
            raise DataFormatError(path, line_no, f"timestamp {ts[:40]!r} is not a non-negative integer")


def _parse_csv_chunk(chunk: bytes):
    """Vectorised parse of whole lines; None means "something is wrong, scan it"."""
    if b"\0" in chunk:  # NUL would vanish in the fixed-width id strings
        return None
    b = np.frombuffer(chunk, np.uint8)
    newlines = np.flatnonzero(b == 10)
    commas = np.flatnonzero(b == 44)
    n = newlines.size + 1
    if commas.size != 3 * n or np.any(np.bincount(np.searchsorted(newlines, commas), minlength=n) != 3):
        return None
    line_start = np.concatenate([[0], newlines + 1])
    line_end = np.append(newlines, b.size)
    c1, c2, c3 = commas[0::3], commas[1::3], commas[2::3]
    if np.any(c1 == line_start) or np.any(c2 == c1 + 1) or np.any(c3 == c2 + 1) or np.any(line_end == c3 + 1):
        return None
    if (np.any(line_end - c3 - 1 > MAX_DIGITS) or np.any(c1 - line_start > MAX_ID_BYTES)
            or np.any(c2 - c1 - 1 > MAX_ID_BYTES)):
        return None
    users = _fixed_width(b, line_start, c1)
    items = _fixed_width(b, c1 + 1, c2)
    rating_s = _fixed_width(b, c2 + 1, c3)
    ts_s = _fixed_width(b, c3 + 1, line_end)
    ts_bytes = ts_s.view(np.uint8)
    if not (_DIGIT[ts_bytes] | (ts_bytes == 0)).all():
        return None
    rb = rating_s.view(np.uint8)
    if not (_DIGIT[rb] | (rb == 0) | (rb == ord("."))).all():
        return None
    try:
        ratings = rating_s.astype(np.float64)
    except ValueError:
        return None
    if np.any((ratings != np.round(ratings)) | (ratings < 1) | (ratings > 5)):
        return None
    return users, items, ratings.astype(np.int8), ts_s.astype(np.int64)


def read_amazon_ratings_csv(path: str | Path, *, dataset: str = "books", min_count: int = 5) -> Sequences:
    """Raw Amazon 2014 ratings CSV (`user,item,rating,timestamp`, string ids, no header) with the reference's
    5-core filter.

    Matches AmazonDataProcessor.preprocess_rating in meta-recsys/generative-recommenders
    (generative_recommenders/research/data/preprocessor.py, checked at commit db1bf8f):
      1. user and item counts are taken ONCE on the unfiltered table; rows whose item count < 5, then rows whose
         user count < 5 are dropped. Both counts come from the raw table, so this is a single pass, not an
         iteration to a fixed point.
      2. item and user ids of the remaining rows become categorical codes (sorted order of the raw ids);
         here item id = code + 1 so that 0 stays padding (the reference uses the code itself, so its item 0 is
         both a real item and the padding id). num_items is the number of items left after step 1.
      3. events sorted by timestamp, grouped by user; users left with < 5 events are dropped (their items keep
         their ids, so some ids may end up with no events, as in the reference).
    Differences: ids are always read as strings (pandas may parse all-digit ASINs as integers), and the time sort
    is STABLE (pandas' default quicksort leaves the order of same-day events unspecified). Rows are ordered by
    raw user id; `item_raw_ids[i]` is the raw id of item i ("" at 0).
    """
    path = Path(path)
    data, digest = read_source(path)
    parts = []
    for chunk, line in iter_line_chunks(data, 1):
        parsed = _parse_csv_chunk(chunk)
        if parsed is None:
            _scan_csv_lines(path, chunk, line)
            raise DataFormatError(path, None, f"malformed near line {line} (fast check failed, scan found nothing)")
        parts.append(parsed)
    if not parts:
        raise DataFormatError(path, None, "no data lines")
    users_s, items_s, ratings, times = (np.concatenate(col) for col in zip(*parts))

    user_raw, user_code, user_count = np.unique(users_s, return_inverse=True, return_counts=True)
    item_raw, item_code, item_count = np.unique(items_s, return_inverse=True, return_counts=True)
    keep = (item_count[item_code] >= min_count) & (user_count[user_code] >= min_count)
    kept_items = np.unique(item_code[keep])
    new_item_id = np.zeros(item_raw.size, np.int64)
    new_item_id[kept_items] = np.arange(1, kept_items.size + 1)

    user_code, items, ratings, times = user_code[keep], new_item_id[item_code[keep]], ratings[keep], times[keep]
    per_user = np.bincount(user_code, minlength=user_raw.size)
    long_enough = per_user[user_code] >= min_count
    log.info(
        "%s: %d ratings, %d users, %d items; count filter (>= %d, one pass on raw counts) keeps %d ratings, "
        "%d items; dropping users left with < %d ratings removes %d users and %d ratings",
        path, users_s.size, user_raw.size, item_raw.size, min_count, int(keep.sum()), kept_items.size,
        min_count, int(np.count_nonzero((per_user > 0) & (per_user < min_count))), int((~long_enough).sum()))
    if not long_enough.any():
        raise DataFormatError(path, None, f"no user has >= {min_count} ratings after the {min_count}-core filter")
    raw_ids = np.concatenate([[b""], item_raw[kept_items]])
    return sequences_from_events(
        dataset, user_code[long_enough], items[long_enough], times[long_enough], ratings[long_enough],
        num_items=kept_items.size, item_raw_ids=np.char.decode(raw_ids, "utf-8", errors="replace").astype(str),
        source_files={source_key(path): digest}, user_labels=np.char.decode(user_raw, "utf-8", errors="replace"),
    )
