"""The one exception type the command line turns into a one-line message."""


class SeqmnistError(Exception):
    """A problem the user can fix: bad data, a bad flag, a bad file.

    The CLI prints ``seqmnist: error: <message>`` and exits with code 2 for
    these; anything else is a bug and keeps its traceback.
    """
