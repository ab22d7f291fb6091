"""Commands that raise on purpose, plugged into the CLI's command table by tests/test_cli.py."""

import click

from promotion.errors import ConflictError, InvalidInput, RegistryError


@click.command("boom")
@click.argument("kind")
def command(kind: str) -> int:
    if kind == "invalid":
        raise InvalidInput("policies/x.yaml:3:5: metrics.rmse.max: expected a finite number")
    if kind == "registry":
        raise RegistryError("cannot reach http://alice:s3cret@127.0.0.1:9 after 3 retries")
    if kind == "conflict":
        raise ConflictError("the alias moved while deciding")
    if kind == "interrupt":
        raise KeyboardInterrupt
    if kind == "bug":
        token = "http://bob:hunter2@127.0.0.1:9"
        raise ZeroDivisionError(f"bad luck near {token}")
    if kind == "rejected":
        return 1
    return 0
