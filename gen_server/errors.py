"""User-facing errors: one line naming the file or message and what is wrong.

Commands raise :class:`InputError` (or a subclass); ``timewalk`` prints it on one line and exits 2.
"""


class InputError(ValueError):
    """Bad input from the user: a file, a flag, a message. ``str(err)`` is the whole explanation."""
