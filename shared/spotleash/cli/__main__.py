"""``python -m spotleash.cli``: the console script's entry, for environments without it on PATH."""

from spotleash.cli.entry import main

if __name__ == "__main__":
    main()
