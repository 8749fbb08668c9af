#!/usr/bin/env python3
"""Command-line entry point: ``python cli.py COMMAND ...`` (the same as the ``face3d`` console script)."""
import sys

from face3d.cli import main

if __name__ == "__main__":
    sys.exit(main())
