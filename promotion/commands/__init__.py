"""The `promote` subcommands: thin click layers over plain functions."""
