"""``python -m netcache``: the demo, and ``stats``/``clear`` for a cache folder."""

from __future__ import annotations

import argparse
import sys
import time

from netcache import cli, demo
from netcache.config import default_cache_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m netcache")
    commands = parser.add_subparsers(dest="command", required=True)
    run_demo = commands.add_parser("demo", help="read through netcache from a local remote")
    run_demo.add_argument("--size-mib", type=int, default=32, help="size of the demo file")
    run_demo.add_argument("--cache-dir", default=None, help="cache folder (default: temporary)")
    show = commands.add_parser(
        "stats", help="live processes using a cache folder, and what it holds per remote file"
    )
    show.add_argument("cache_dir", nargs="?", default=None,
                      help="the cache folder (default: netcache's own)")  # fmt: skip
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.add_argument("--watch", type=float, metavar="N", help="refresh every N seconds")
    empty = commands.add_parser("clear", help="remove cached files from a cache folder")
    empty.add_argument("cache_dir")
    which = empty.add_mutually_exclusive_group()
    which.add_argument("--older-than", type=float, metavar="SECONDS",
                       help="only pages not used for this long")  # fmt: skip
    which.add_argument("--url", help="only this remote file")
    empty.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    if args.command == "demo":
        if args.size_mib < 1:
            parser.error("--size-mib must be at least 1")
        return demo.run(args.size_mib, args.cache_dir)
    if args.command == "clear" and args.older_than is not None and args.older_than < 0:
        parser.error("--older-than must be a number of seconds >= 0")
    if args.command == "stats" and args.watch is not None and args.watch <= 0:
        parser.error("--watch must be a number of seconds > 0")
    try:
        if args.command == "stats":
            folder = args.cache_dir or default_cache_dir()
            while True:
                if args.watch is not None and not args.json:
                    print("\033[2J\033[H", end="")  # clear the terminal, as watch(1)
                print(cli.stats(folder, args.json), flush=True)
                if args.watch is None:
                    break
                time.sleep(args.watch)
        else:
            print(cli.clear(args.cache_dir, args.older_than, args.url, args.json))
    except KeyboardInterrupt:  # the end of --watch
        return 0
    except OSError as exc:  # not a cache folder, not to be trusted, or not all removed
        print(f"python -m netcache {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
