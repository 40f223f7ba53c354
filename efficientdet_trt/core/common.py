"""Small helpers shared by the command-line scripts: errors, signals, argument checks, output paths
that never touch an input, atomic writes."""

import argparse
import contextlib
import logging
import os
import signal
import sys
import tempfile


class UserError(Exception):
    """A problem with the user's input: reported as one line, no traceback."""


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: raised in the main thread so every `atomic_output` removes its temp file."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum, _frame):
    raise Terminated(signum)


def setup_logging(verbose=False):
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run_cli(main, argv=None):
    """Run `main(argv)`; a UserError becomes `error: <message>` and exit status 2.

    An OSError that escaped the scripts' own checks (a disk that filled up, a
    folder removed mid-run) is reported the same way, naming the path. Ctrl-C
    exits 130; SIGTERM and SIGHUP (a scheduler's kill, a closed terminal) exit
    143 and 129 with one line, after the temporary files are removed.
    """
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_terminated)
    try:
        return main(argv)
    except Terminated as stop:
        name = signal.Signals(stop.signum).name
        print(f"{name}: stopped; temporary files removed, finished outputs kept", file=sys.stderr)
        sys.exit(128 + stop.signum)
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


def check_output_file(path, flag, inputs=None):
    """Fail now, before any slow work, if `path` (given with `flag`) cannot be written.

    With `inputs` (see check_not_an_input) it may not be one of them either.
    """
    if inputs:
        check_not_an_input(path, flag, inputs)
    if os.path.isdir(path):
        raise UserError(f"{path}: is a folder; {flag} takes a file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(folder):
        raise UserError(f"{path}: the folder {folder} does not exist; create it first")
    if not os.path.isdir(folder):
        raise UserError(f"{path}: {folder} is a file, not a folder; choose another {flag} path")
    _probe_writable(folder, path)


def check_output_folder(path, flag):
    """Fail now if the output folder `path` (given with `flag`) cannot be used; create nothing yet.

    An existing folder must be writable; a missing one, its nearest existing
    parent (the folder it would be created in).
    """
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise UserError(f"{path}: exists and is not a folder; {flag} takes a folder")
        _probe_writable(path, path)
        return
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UserError(f"{path}: {parent} is a file, not a folder; choose another {flag}")
    _probe_writable(parent, path)


def prepare_output_folder(path, flag):
    """Create the output folder `path` (given with `flag`) if needed and check it can be written in.

    Call it once the inputs are known to be good (the model loaded): a run that
    fails earlier leaves no empty folder behind; check_output_folder checks first.
    """
    check_output_folder(path, flag)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise UserError(f"{path}: cannot create this folder ({error.strerror}); choose another {flag}") from None


def _existing_same_file(a, b):
    try:
        return os.path.samefile(a, b)  # symbolic and hard links, any spelling
    except OSError:
        return False


def _hard_link_into(path, folder):
    """The file in `folder` that existing file `path` is a hard link of (same inode), or None."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    if status.st_nlink < 2 or not os.path.isfile(path):
        return None
    for root, _, files in os.walk(folder):
        for name in files:
            candidate = os.path.join(root, name)
            with contextlib.suppress(OSError):
                other = os.stat(candidate)
                if (other.st_dev, other.st_ino) == (status.st_dev, status.st_ino):
                    return candidate
    return None


def _inside(path, folder):
    """Whether `path` is `folder` or lies under it, spelled any way (both resolved through links)."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_not_an_input(output, flag, inputs, replaces_folder=False):
    """Refuse to write `output` (given with `flag`) over one of `inputs` or into an input folder.

    `inputs` maps each input's flag to its path (None when not given): files
    or folders. Whatever the spelling (relative, '..', symbolic or hard links),
    the output may not be an input, nor lie inside an input folder. With
    `replaces_folder` the output is a folder the script replaces as a whole,
    which may not contain an input either.
    """
    for input_flag, source in inputs.items():
        if not source or not os.path.exists(source):
            continue
        if _existing_same_file(output, source) or os.path.realpath(output) == os.path.realpath(source):
            raise UserError(f"{output}: is the {input_flag} input ({source}) and would be overwritten; "
                            f"give {flag} another path")
        if os.path.isdir(source) and (_inside(output, source) or _hard_link_into(output, source)):
            raise UserError(f"{output}: lies inside the {input_flag} folder {source} (or is a link to a file "
                            f"there), which is only read; give {flag} a path outside it")
        if replaces_folder and _inside(source, output):
            raise UserError(f"{output}: holds the {input_flag} input {source} and would be replaced; "
                            f"give {flag} another path")


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


PARTIAL_SUFFIX = ".partial"


def _partial_prefix(path):
    return "." + os.path.basename(path) + "."


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_partials(path):
    """Remove temp files `atomic_output` left for `path` when its process was killed outright (SIGKILL,
    power loss): `.NAME.<pid>.XXXX.partial` whose process is gone. A live process's file is left alone."""
    folder = os.path.dirname(os.path.abspath(path))
    prefix = _partial_prefix(path)
    with contextlib.suppress(OSError):
        for name in os.listdir(folder):
            if not (name.startswith(prefix) and name.endswith(PARTIAL_SUFFIX)):
                continue
            pid = name[len(prefix):].split(".", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _process_alive(int(pid)):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(folder, name))


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
    remove_stale_partials(path)
    fd, tmp = tempfile.mkstemp(prefix=_partial_prefix(path) + f"{os.getpid()}.", suffix=PARTIAL_SUFFIX, dir=folder)
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


def check_separate_folders(input_path, output):
    """Refuse an --output that is, contains or lies inside the --input folder (it would read its own results)."""
    if not os.path.isdir(input_path):
        return
    source, target = os.path.realpath(input_path), os.path.realpath(output)
    if source == target or target.startswith(source + os.sep) or source.startswith(target + os.sep):
        raise UserError(f"{output}: the output folder must be outside the input folder {input_path} (and not "
                        "contain it); choose another --output")
