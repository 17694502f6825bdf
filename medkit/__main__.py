"""`python -m medkit` runs the command-line app."""

from medkit.cli.main import run

if __name__ == "__main__":
    run()
