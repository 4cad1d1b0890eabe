"""One module per group of `pybuild` subcommands; each exposes register(add_command)."""
