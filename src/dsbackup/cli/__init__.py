"""Command-line interface: one module per command.

A command module defines ``COMMAND`` (its name), ``HELP`` (one line), ``add_arguments(parser)``
and ``run(args) -> int``. ``dsbackup.cli.main`` discovers them, so adding a command touches
nothing else.
"""
