"""The console script ``hpcnn``: one look at the command line before anything heavy is
imported, so that ``hpcnn status`` begins its cluster login first (remote/early_login.py);
then the CLI."""

from __future__ import annotations

import sys


def main() -> None:
    if "status" in sys.argv[1:]:  # only then is early_login worth its imports
        from hpcnn.remote.early_login import begin_for

        begin_for(sys.argv[1:])
    from hpcnn.cli.main import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
