"""User-facing errors.

Anything the user can fix (a missing file, a bad config key, a label outside the label
set) raises `PretrainerError` with a one-line message naming the file, line or key.
The CLI prints that line and exits with status 2 instead of showing a traceback.
"""


class PretrainerError(Exception):
    """An error caused by the user's input; its message is shown as is."""
