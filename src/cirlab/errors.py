"""The exception types for user mistakes: the CLI prints the message on one line and exits with the error's
``exit_code`` (2, or 3 for an index in use by another process)."""


class CirlabError(Exception):
    """A user-facing error: the message says what was wrong and what to do about it."""

    exit_code = 2


class InUse(CirlabError):
    """A resource that one process at a time may open (a Qdrant Edge shard, a local-mode folder) is open in another:
    nothing is wrong with it. Exit code 3, apart from 1 (damaged) and 2 (a mistake)."""

    exit_code = 3


SHOWN = 200  # characters of a value a message quotes back


def quoted(value: str, limit: int = SHOWN) -> str:
    """A value as a message quotes it: its first ``limit`` characters, marked when cut ('abc'... (10,000 chars))."""
    value = str(value)
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}... ({len(value):,} characters)"
