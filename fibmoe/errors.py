"""The one exception type the CLI turns into a single error line and a non-zero exit, and the one way a
failure's text is trimmed for a record."""

import traceback

ERROR_CHARS = 4000  # what a record keeps of a failure's text (the tail: where the cause is)


class FibmoeError(Exception):
    """A user-facing failure: bad input, a missing tool, a malformed file. The message is the line."""


def error_text(failure: BaseException | str) -> str:
    """A failure as a record keeps it: an exception with its chain and the original traceback, or a
    captured log; trimmed to its last ERROR_CHARS characters."""
    if isinstance(failure, BaseException):
        root = failure.__cause__ or failure.__context__ or failure
        text = "".join(traceback.format_exception(type(root), root, root.__traceback__))
        if root is not failure:
            text = f"{failure}\n{text}"
    else:
        text = "\n".join(line.rstrip() for line in (failure or "").strip().splitlines())
    return text.strip()[-ERROR_CHARS:]
