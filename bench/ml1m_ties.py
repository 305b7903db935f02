"""How much the order of same-second ratings decides ML-1M's held-out events.

  python -m bench.ml1m_ties --timed ../shared/datasets/ml-1m/ratings_users1-2999.dat.gz \
      --ordered ../shared/datasets/ml-1m/sequences.txt

MovieLens users rate in bursts, many ratings in one second. A leave-one-out split holds out each user's last
event (and loo-val also the second-to-last), so for a user whose last second holds several ratings, *which*
rating is the test event is decided by how the sort broke the tie, not by the data. lrm reads `ratings.dat` with
a stable sort (file order within a second); the HSTU reference sorts with pandas' default, unstable sort, and the
shared `sequences.txt` was built by yet another one. This prints, for the users both files hold, how often the
two orders disagree on the held-out events, next to how often the last event shares its second with the one
before it (what the time bias can see and a position-only model cannot). Nothing is written.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from data_pipeline.datasets.amazon import read_s3rec_sequences
from data_pipeline.datasets.events import Sequences
from data_pipeline.datasets.movielens import read_ml1m_ratings


def tie_report(timed: Sequences, ordered: Sequences) -> tuple[dict[str, int], list[int]]:
    """Counts over the users of `timed` (events with timestamps, in the reader's stable time order) of where
    `ordered` (the same users' events in another time order, e.g. `sequences.txt`) differs from it, and the ids
    of the users whose last event differs.

    Every user of `timed` must be a row of `ordered` holding the same items, each item once, and `ordered` must
    be non-decreasing in `timed`'s timestamps: anything else is an error naming the user, since then the two are
    not two orders of the same data."""
    if not timed.has_timestamps:
        raise ValueError(f"{timed.dataset}: the timed sequences have no timestamps")
    rows = {int(u): row for row, u in enumerate(ordered.user_ids)}
    c = dict.fromkeys(("users", "events", "events_sharing_a_second", "identical_order", "last_differs",
                       "second_to_last_differs", "last_shares_second_with_previous"), 0)
    last_differs = []
    for r in range(timed.num_users):
        user = int(timed.user_ids[r])
        if user not in rows:
            raise ValueError(f"user {user} has timed events but no row in the ordered sequences")
        lo, hi = timed.offsets[r], timed.offsets[r + 1]
        items_t, ts = timed.item_ids[lo:hi], timed.timestamps[lo:hi]
        o = rows[user]
        items_o = ordered.item_ids[ordered.offsets[o]:ordered.offsets[o + 1]]
        if np.unique(items_t).size != items_t.size:
            raise ValueError(f"user {user} rated an item twice: the orders cannot be matched item by item")
        if items_o.size != items_t.size or not np.array_equal(np.sort(items_o), np.sort(items_t)):
            raise ValueError(f"user {user}: the ordered sequence holds other items than the timed events")
        time_of = dict(zip(items_t.tolist(), ts.tolist()))
        ts_o = np.asarray([time_of[i] for i in items_o.tolist()])
        back = np.flatnonzero(np.diff(ts_o) < 0)
        if back.size:
            raise ValueError(f"user {user}: the ordered sequence goes back in time at position {int(back[0]) + 1}")
        _, count = np.unique(ts, return_counts=True)
        c["users"] += 1
        c["events"] += items_t.size
        c["events_sharing_a_second"] += int(count[count > 1].sum())
        c["identical_order"] += int(np.array_equal(items_t, items_o))
        if items_t[-1] != items_o[-1]:
            last_differs.append(user)
        c["second_to_last_differs"] += int(items_t.size > 1 and items_t[-2] != items_o[-2])
        c["last_shares_second_with_previous"] += int(items_t.size > 1 and ts[-1] == ts[-2])
    c["last_differs"] = len(last_differs)
    return c, last_differs


def format_report(c: dict[str, int]) -> str:
    """Markdown: each count with its share of the users (or events)."""
    def row(what, n, of):
        return f"| {what} | {n:,} | {100 * n / c[of]:.1f}% of {of} |"
    return "\n".join([
        "| quantity | count | share |",
        "|---|---|---|",
        f"| users in both files | {c['users']:,} | |",
        row("events in a second shared with another event of the same user", c["events_sharing_a_second"], "events"),
        row("users whose two orders are identical", c["identical_order"], "users"),
        row("users whose last event (the test event) differs between the orders", c["last_differs"], "users"),
        row("users whose second-to-last event (loo-val's validation event) differs", c["second_to_last_differs"],
            "users"),
        row("users whose last event shares its second with the one before", c["last_shares_second_with_previous"],
            "users"),
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--timed", required=True, help="ML-1M ratings lines with timestamps (ratings.dat, or .gz)")
    p.add_argument("--ordered", required=True, help="the same users' sequences in S3Rec format (sequences.txt)")
    p.add_argument("--segments", help="write here last_differs.txt and last_same.txt: the user ids (one a line) "
                                      "whose last event differs between the orders, and the others, for "
                                      "`bench.compare --users`")
    a = p.parse_args(argv)
    timed = read_ml1m_ratings(Path(a.timed))
    ordered = read_s3rec_sequences(Path(a.ordered), dataset="ml-1m")
    counts, last_differs = tie_report(timed, ordered)
    print(format_report(counts))
    if a.segments:
        out = Path(a.segments)
        out.mkdir(parents=True, exist_ok=True)
        differs = set(last_differs)
        same = [int(u) for u in timed.user_ids if int(u) not in differs]
        for name, ids in (("last_differs.txt", last_differs), ("last_same.txt", same)):
            (out / name).write_text("".join(f"{u}\n" for u in ids))
        print(f"\nwrote {out / 'last_differs.txt'} ({len(last_differs)} users) and {out / 'last_same.txt'} "
              f"({len(same)} users)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
