"""The one exception type that means "the user gave us something wrong"."""


class CactusError(Exception):
    """A user-facing error: the CLI prints its message as one line on stderr and exits 1.

    The message must name the file or option at fault and say what is wrong with it.
    """
