"""The one error type that means "the user's input is wrong": the CLI prints it and exits 2."""


class UserError(Exception):
    """Bad input (spec, data, model, arguments): a message for the user, never a traceback."""
