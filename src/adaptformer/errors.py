"""The one exception type users see.

Library code raises :class:`AdaptFormerError` with a one-line message that names the file or option at fault
and what was expected. The CLI turns it into ``error: <message>`` and exit status 2, never a traceback.
"""


class AdaptFormerError(ValueError):
    """A problem with user input (a file, an option, a dataset) described in one line."""


def first_line(error: BaseException, limit: int | None = None) -> str:
    """How another library's exception enters a one-line message: the first non-blank line of its text (at most
    ``limit`` characters), or its type's name when it says nothing."""
    text = str(error).strip()
    line = text.splitlines()[0].strip() if text else type(error).__name__
    return line[:limit] if limit else line


class UnknownTask(AdaptFormerError):
    """A task name that the bank does not hold (never listed, removed, or unusable)."""


class BusyError(AdaptFormerError):
    """A bounded queue or pool is full: the work was refused, not started; try again later."""
