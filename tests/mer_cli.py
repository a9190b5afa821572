"""``mer ARGS`` in the test process, through the console entry point: exit code, stdout and stderr as a shell sees them."""

import sys


def run_mer(capsys, *args) -> tuple[int, str, str]:
    """Run ``mer.cli.main`` with ``args``; ``capsys`` (pytest's fixture) captures what it prints."""
    from mer.cli import main

    argv, sys.argv = sys.argv, ["mer", *map(str, args)]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    finally:
        sys.argv = argv
    captured = capsys.readouterr()
    return code, captured.out, captured.err
