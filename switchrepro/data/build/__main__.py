"""`python -m switchrepro.data.build`: the build without the CLI (`switchrepro data build` runs the same)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from switchrepro.data import DataError
from switchrepro.data.build import PARTS, build


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m switchrepro.data.build",
                                description="Rebuild the embedded data from the pinned sources (needs network).")
    p.add_argument("--only", choices=PARTS, default=None, help="rebuild only this part (default: everything)")
    p.add_argument("--raw-dir", type=Path, default=None, help="where the pinned raw files go (default: cache)")
    p.add_argument("--out-dir", type=Path, default=None, help="embedded dir (default: the package's)")
    args = p.parse_args(argv)
    try:
        build(args.only, args.raw_dir, args.out_dir, log=lambda m: print(m, file=sys.stderr))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
