#!/usr/bin/env python
"""Train a model: `python train.py CORPUS [options]` is `textgen train CORPUS [options]`."""

import sys

from textgen.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
