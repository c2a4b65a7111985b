"""``python -m spotleash.cli_main``: the console script's entry, for environments without it on PATH."""

from spotleash.cli import main

if __name__ == "__main__":
    main()
