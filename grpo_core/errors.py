"""The one exception type for mistakes a user can fix (bad config, bad input files, bad paths).

The CLI prints a `UserError` as a single line on stderr and exits with status 2; every other
exception is a bug or an environment failure and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in the user's input; its message is one line that says what and where."""
