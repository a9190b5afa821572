"""The one exception family the CLI turns into a one-line error (exit code 2)."""


class MerError(Exception):
    """A user-facing problem: bad input, bad config, unreachable store or cluster.

    The message is one line that names the file, row, key or address at fault;
    the CLI prints it as ``error: <message>`` with no traceback.
    """

    exit_code = 2
