"""Placeholder: layer-by-layer visualisation is not implemented yet (see the Visualize issue)."""

import sys

if __name__ == "__main__":
    print("visualize.py is not implemented yet: only training works in this version", file=sys.stderr)
    sys.exit(2)
