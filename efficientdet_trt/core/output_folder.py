"""infer.py's output folder: one run at a time, and a manifest of what each run wrote.

`infer_manifest.json` in the folder records every result file infer.py has
written there and the run that last wrote it, with each run's start time,
input and model:

    {"written_by": "infer.py", "runs": [{"run": 1, "started": "...", "input": "...", "model": "...",
     "finished": true}, ...], "files": {"img_000.txt": 1, "img_000.png": 1, ...}}

so the latest run's files are those of the highest run number, and a file the
manifest does not list was not written by infer.py. A run claims its files in
the manifest before it writes any of them (a killed run's files stay known),
and refuses to replace a file that exists but is not listed. A lock
(`.infer.lock`, there only while a run writes) refuses a second run into the
same folder.
"""

import datetime
import fcntl
import json
import logging
import os

from efficientdet_trt.core.common import UserError, atomic_output

log = logging.getLogger("output_folder")

MANIFEST = "infer_manifest.json"
LOCK = ".infer.lock"
WRITER = "infer.py"


class OutputFolder:
    """The output folder of one infer.py run: `with OutputFolder(path, input, model) as folder:`."""

    def __init__(self, path, input_path, model_path):
        self.path = path
        self.run = {"input": os.path.abspath(input_path), "model": os.path.abspath(model_path)}
        self.manifest = None
        self._lock = None

    def __enter__(self):
        path = os.path.join(self.path, LOCK)
        while True:
            handle = open(path, "a")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                raise UserError(f"{self.path}: another infer.py run is writing into this folder; wait for it to "
                                "finish or choose another --output") from None
            try:  # the holder before us removes the file when done: lock the file that is there now
                if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                    break
            except FileNotFoundError:
                pass
            handle.close()
        self._lock = handle
        self.manifest = self._read()
        return self

    def __exit__(self, *exc):
        if self._lock is not None:
            os.remove(os.path.join(self.path, LOCK))  # removed while still held: see __enter__
            self._lock.close()
            self._lock = None

    def _read(self):
        path = os.path.join(self.path, MANIFEST)
        if not os.path.exists(path):
            return {"written_by": WRITER, "runs": [], "files": {}}
        try:
            with open(path) as handle:
                manifest = json.load(handle)
            if manifest.get("written_by") != WRITER or not isinstance(manifest.get("files"), dict):
                raise ValueError
            return manifest
        except (OSError, ValueError):
            raise UserError(f"{path}: is not a manifest infer.py wrote; move it away or choose another "
                            "--output") from None

    def _write(self):
        with atomic_output(os.path.join(self.path, MANIFEST), "w") as handle:
            json.dump(self.manifest, handle, indent=1)

    def written_here(self, relative):
        """Whether the file `relative` (to the folder) was written by an earlier infer.py run."""
        return relative in self.manifest["files"]

    def claim(self, relative_paths):
        """Refuse files of these names that infer.py did not write, then record them as this run's."""
        foreign = [name for name in relative_paths
                   if os.path.lexists(os.path.join(self.path, name)) and not self.written_here(name)]
        if foreign:
            more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
            raise UserError(f"{os.path.join(self.path, foreign[0])}{more}: exists and was not written by infer.py "
                            f"(not in {MANIFEST}); move it away or choose another --output")
        number = max((run["run"] for run in self.manifest["runs"]), default=0) + 1
        started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        self.manifest["runs"].append({"run": number, "started": started, **self.run, "finished": False})
        self.number = number
        previous = dict(self.manifest["files"])
        self.manifest["files"].update({name: number for name in relative_paths})
        self._previous = previous
        self._write()

    def finish(self, written):
        """Record the run as finished: of its claimed files, those not `written` go back to their earlier run
        (or leave the manifest when no file is there any more)."""
        written = set(written)
        for name, run in list(self.manifest["files"].items()):
            if run != self.number or name in written:
                continue
            if name in self._previous and os.path.lexists(os.path.join(self.path, name)):
                self.manifest["files"][name] = self._previous[name]
            else:
                del self.manifest["files"][name]
        self.manifest["runs"][-1]["finished"] = True
        self._write()
        older = sum(1 for run in self.manifest["files"].values() if run != self.number)
        if older:
            log.info("%d result file(s) in %s are from earlier runs (%s lists which run wrote each file)", older,
                     self.path, MANIFEST)

    def remove(self, relative):
        """Remove a file an earlier infer.py run wrote here (never one it did not); True if one was removed."""
        path = os.path.join(self.path, relative)
        if self.written_here(relative) and os.path.isfile(path):
            os.remove(path)
            self.manifest["files"].pop(relative, None)
            return True
        return False
