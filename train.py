"""Train the seed's CNN: ``python train.py [key=value ...]``, as ``catdog-train``; see catdog/train.py and
catdog/conf/train.yaml."""

import sys

from catdog.train import main

if __name__ == "__main__":
    sys.exit(main())
