"""Errors that reach the user as one clear sentence instead of a traceback."""


class UserError(Exception):
    """A mistake in what the user asked for (bad model name, bad layer, empty corpus, ...).

    The CLI prints the message alone and exits with status 2; nothing is written before it is
    raised.
    """
