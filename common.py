"""Small helpers shared by the command-line scripts: errors, logging, atomic writes."""

import contextlib
import logging
import os
import sys
import tempfile


class UserError(Exception):
    """A problem with the user's input: reported as one line, no traceback."""


def setup_logging(verbose=False):
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run_cli(main, argv=None):
    """Run `main(argv)`; a UserError becomes `error: <message>` and exit status 2."""
    try:
        return main(argv)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


@contextlib.contextmanager
def atomic_output(path, mode="wb", check=None):
    """Open a temporary file beside `path`; rename it over `path` only on success.

    `check(temporary_path)`, if given, runs on the complete file before the
    rename; an exception from it leaves `path` as it was.
    """
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UserError(f"{path}: the folder {folder} does not exist; create it first")
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".partial", dir=folder)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
        if check is not None:
            check(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_bytes_atomic(path, data, check=None):
    with atomic_output(path, "wb", check) as handle:
        handle.write(data)
