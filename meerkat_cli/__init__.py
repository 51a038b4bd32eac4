"""meerkat_cli: the thin Typer front-end over ``meerkat_core``."""
