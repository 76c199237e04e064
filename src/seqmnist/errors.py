"""What the user is told: a problem they can fix (the one exception the command line turns into a
one-line message), and where lines of progress go."""

from collections.abc import Callable

Log = Callable[[str], None]  # where a line of progress for the user goes (print, a prefixing wrapper, Ray's store)


class SeqmnistError(Exception):
    """A problem the user can fix: bad data, a bad flag, a bad file.

    The CLI prints ``seqmnist: error: <message>`` and exits with code 2 for
    these; anything else is a bug and keeps its traceback.
    """
