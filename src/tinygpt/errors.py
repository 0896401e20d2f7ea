"""The one exception type a user is meant to see.

Anything a user can cause and fix (a bad path, a bad option value, a truncated
checkpoint) is raised as a ``TinyGPTError`` where the bad value enters, with a
one-line message that names the problem and the fix. The CLI prints it without a
traceback and exits non-zero; everything else is a bug and keeps its traceback.
"""


class TinyGPTError(Exception):
    """A user-facing error: ``str(err)`` is a single line saying what to do."""
