"""``python -m netcache``: the demo (more commands come with the CLI)."""

from __future__ import annotations

import argparse
import sys

from netcache import demo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m netcache")
    commands = parser.add_subparsers(dest="command", required=True)
    run_demo = commands.add_parser("demo", help="read through netcache from a local remote")
    run_demo.add_argument("--size-mib", type=int, default=32, help="size of the demo file")
    run_demo.add_argument("--cache-dir", default=None, help="cache folder (default: temporary)")
    second = commands.add_parser("_second-process")  # used by the demo itself
    second.add_argument("url")
    second.add_argument("cache_dir")
    args = parser.parse_args(argv)
    if args.command == "demo":
        if args.size_mib < 1:
            parser.error("--size-mib must be at least 1")
        return demo.run(args.size_mib, args.cache_dir)
    demo.second_process(args.url, args.cache_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
