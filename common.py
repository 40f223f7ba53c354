"""Small helpers shared by the command-line scripts: errors, argument checks, output paths, atomic writes."""

import argparse
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
    """Run `main(argv)`; a UserError becomes `error: <message>` and exit status 2.

    An OSError that escaped the scripts' own checks (a disk that filled up, a
    folder removed mid-run) is reported the same way, naming the path.
    """
    try:
        return main(argv)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except OSError as error:
        where = f"{error.filename}: " if error.filename else ""
        print(f"error: {where}{error.strerror or error}; check the path, its permissions and free space",
              file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


class DefaultsOnceFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default in --help once: not when its help already explains it, not for None/False."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """The scripts' parser: defaults shown in --help, and a bad argument is one `error:` line (exit 2)."""

    def __init__(self, description):
        super().__init__(description=description, formatter_class=DefaultsOnceFormatter)

    def error(self, message):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _checked_number(convert, kind, accept, requirement, doc):
    """An argparse type: `convert` the text, then require `accept(value)`; one-line messages otherwise."""

    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"must be {requirement} (got {text})")
        return value

    parse.__doc__ = doc
    return parse


unit_interval = _checked_number(float, "a number", lambda v: 0.0 <= v <= 1.0, "between 0 and 1",
                                "a float in [0, 1] (score and IoU thresholds)")
positive_int = _checked_number(int, "a whole number", lambda v: v >= 1, "at least 1",
                               "an integer >= 1 (batch sizes, image counts)")
positive_float = _checked_number(float, "a number", lambda v: v > 0, "more than 0",
                                 "a number > 0 (sizes such as a workspace limit)")
nonnegative_int = _checked_number(int, "a whole number", lambda v: v >= 0, "0 or more",
                                  "an integer >= 0 (warm-up runs)")


def _probe_writable(folder, path):
    """Create and remove a file in `folder`: the only test that holds for root, read-only mounts and /proc."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as error:
        raise UserError(f"{path}: cannot write in {folder} ({error.strerror}); choose a writable location") from None


def check_output_file(path, flag):
    """Fail now, before any slow work, if `path` (given with `flag`) cannot be written."""
    if os.path.isdir(path):
        raise UserError(f"{path}: is a folder; {flag} takes a file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(folder):
        raise UserError(f"{path}: the folder {folder} does not exist; create it first")
    if not os.path.isdir(folder):
        raise UserError(f"{path}: {folder} is a file, not a folder; choose another {flag} path")
    _probe_writable(folder, path)


def prepare_output_folder(path, flag):
    """Create the output folder `path` (given with `flag`) if needed and check it can be written in."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{path}: exists and is not a folder; {flag} takes a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise UserError(f"{path}: cannot create this folder ({error.strerror}); choose another {flag}") from None
    _probe_writable(path, path)


def folder_mode():
    """The mode a newly created folder gets under the current umask (tempfile.mkdtemp's are always 0700)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o777 & ~mask


def _file_mode():
    """The mode a newly created file gets under the current umask (tempfile.mkstemp's are always 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_output(path, mode="wb", check=None):
    """Open a temporary file beside `path`; rename it over `path` only on success.

    `check(temporary_path)`, if given, runs on the complete file before the
    rename; an exception from it leaves `path` as it was. The file ends with
    the permissions any new file gets (umask), not the temporary file's 0600.
    """
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UserError(f"{path}: the folder {folder} does not exist; create it first")
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".partial", dir=folder)
    try:
        os.fchmod(fd, _file_mode())
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
