"""Errors that reach the user as one line and a non-zero exit code."""

from pydantic import ValidationError


class UserError(Exception):
    """Bad input: the message names the file/key/value and the fix; the CLI prints it and exits with 2."""


class BlockwiseRunFailed(Exception):
    """Some blocks still failed after their retries; the output is left marked incomplete (exit code 1)."""


def describe_validation_error(error: ValidationError) -> str:
    """One line for a pydantic validation error: the offending key, its value and what is wrong."""
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "config"
    message = first["msg"].removeprefix("Value error, ")
    more = f" (and {error.error_count() - 1} more problems)" if error.error_count() > 1 else ""
    return f"{key} = {first.get('input')!r}: {message}{more}"
