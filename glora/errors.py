"""The one exception type for bad user input: scripts print its message as one line and exit 2."""


class UserError(Exception):
    """Bad input (config, data, checkpoint): the message says what, where and how to fix it."""
