"""Show what each layer sees: ``python visualize.py [image=PATH] [key=value ...]``, as ``catdog-visualize``; see
catdog/visualize.py and catdog/conf/visualize.yaml."""

import sys

from catdog.visualize import main

if __name__ == "__main__":
    sys.exit(main())
