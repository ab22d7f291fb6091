"""`python -m train CONFIG...`: the same as `promote train CONFIG...`."""

import sys

from promotion.cli import run

if __name__ == "__main__":
    sys.exit(run(["train", *sys.argv[1:]]))
