"""The medkit command line (Typer). `medkit.cli.main` assembles the app."""
