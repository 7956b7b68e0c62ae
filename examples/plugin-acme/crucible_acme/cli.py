import argparse
import json
import sys

from crucible_acme.source import LinesSource
from crucible_core.ir import DatasetSpec


class CountCommand:
    """``crucible acme-count FILE [--json]``: how many rows the lines source reads."""

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.description = "Count the non-empty lines of a text file."
        parser.add_argument("file", help="a text file")
        parser.add_argument("--json", action="store_true", help="print {file, rows} as JSON")

    def run(self, args: argparse.Namespace) -> int:
        spec = DatasetSpec(uri=f"lines:{args.file}")
        rows = sum(1 for _ in LinesSource().iter_rows(spec))
        if args.json:
            print(json.dumps({"file": args.file, "rows": rows}))
        else:
            sys.stdout.write(f"{args.file}: {rows} rows\n")
        return 0
