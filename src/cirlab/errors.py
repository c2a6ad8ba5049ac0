"""The one exception type for user mistakes: the CLI prints its message on one line and exits 2."""


class CirlabError(Exception):
    """A user-facing error: the message says what was wrong and what to do about it."""
