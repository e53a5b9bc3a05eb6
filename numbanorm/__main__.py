"""``python -m numbanorm bench [options]``: see ``numbanorm.bench``."""

import sys


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("bench",):
        print("usage: python -m numbanorm bench [--help]", file=sys.stderr)
        return 2
    from .bench import main as bench

    bench(argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
