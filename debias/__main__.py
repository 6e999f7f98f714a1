"""``python -m debias`` and ``accelerate launch -m debias``: the same command line as ``debias``."""

from debias.cli import main

if __name__ == "__main__":
    main()
