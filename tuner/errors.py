"""The one error type that means "the user's input is wrong": the CLI prints it and exits 2."""


class UserError(Exception):
    """Bad input (spec, data, model, arguments): a message for the user, never a traceback."""


def first_line(exc: BaseException) -> str:
    """An exception's first line, for one-line messages (its type when it has no text)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
