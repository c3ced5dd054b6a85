"""``python -m app [--config FILE] [faust args]``: start a worker (default) or run a Faust command."""

from __future__ import annotations

import os
import sys

import app as package


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--config" in args:
        i = args.index("--config")
        if i + 1 >= len(args):
            sys.exit("vectorize-worker: --config needs a file path")
        os.environ["VECTORIZE_WORKER_CONFIG"] = args[i + 1]
        del args[i : i + 2]
    worker = package.worker()  # settings (exit 2 when invalid), the app, its agents and commands
    if not args or args[0].startswith("-"):
        args = ["worker", "-l", worker.settings.log_level.lower(), *args]
    sys.argv = ["faust", *args]
    worker.app.main()


if __name__ == "__main__":
    main()
