"""The one exception type the CLI turns into a single error line and a non-zero exit."""


class FibmoeError(Exception):
    """A user-facing failure: bad input, a missing tool, a malformed file. The message is the line."""
