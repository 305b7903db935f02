"""`lrm-preprocess`: raw public dataset → sequence store, with the split protocol recorded in its metadata.

  lrm-preprocess --dataset beauty --data_root ../shared/datasets --out stores/beauty [--protocol loo-val]
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from data_pipeline import splits, store
from data_pipeline.datasets import DATASETS, DataFormatError, load_dataset


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lrm-preprocess", description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    p.add_argument("--data_root", default=os.environ.get("LRM_DATA_DIR"),
                   help="folder holding the raw datasets (default: $LRM_DATA_DIR)")
    p.add_argument("--out", required=True, help="store directory to write")
    p.add_argument("--protocol", default="loo-val", choices=sorted(splits.PROTOCOLS))
    p.add_argument("--no_download", action="store_true", help="never download; fail with instructions instead")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.data_root:
        _parser().error("--data_root is required (or set LRM_DATA_DIR)")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    t0 = time.time()
    try:
        seqs = load_dataset(args.dataset, args.data_root, download=not args.no_download)
        t_read = time.time() - t0
        meta = store.write_store(seqs, args.out, protocol=args.protocol, overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, DataFormatError) as e:
        print(f"lrm-preprocess: error: {e}", file=sys.stderr)
        return 1

    c = meta["counts"]
    print(f"{meta['dataset']}: {c['users']:,} users, {c['items']:,} items (max id {c['max_item_id']:,}), "
          f"{c['events']:,} events; sequence length min/mean/max "
          f"{c['min_seq_len']}/{c['mean_seq_len']:.2f}/{c['max_seq_len']}")
    print(f"timestamps: {'yes' if meta['has_timestamps'] else 'NO (time bias off)'}; "
          f"ratings: {'yes' if meta['has_ratings'] else 'no'}")
    print(splits.format_split_report(meta["split"]["report"]))
    for name, digest in meta["source_files"].items():
        print(f"source {name} sha256 {digest}")
    print(f"wrote {args.out} (read {t_read:.1f}s, total {time.time() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
