"""The plan's files/ written while the program runs, by a second process.

A large lab pushes a couple of thousand files, and creating them (and their folders) is
file-system work that costs a slow disk as much as a tenth of the whole plan. The program
itself runs on one core, so the files go out from a child process on the other while it runs:
the recording engine hands every resource it records to ``FileStream.feed``, which passes the
child each step's bundle and each secret value, in the order the engine records them (the
order ``collect_secrets`` reads them in). The child writes into ``STAGING`` inside the output
directory; ``Plan.write`` renames it to files/ once the run is over, so an interrupted or
failed plan never leaves a half-written files/ (the next plan clears ``STAGING``).

The files are the very bytes ``Plan.write`` would write on its own (tests/test_plan_stream.py
compares the two): a file is redacted with the secrets known when it was written, and at the
end the child rewrites any file a later secret turns up in (a value can only reach a step
after the resource that made it was recorded, so none should).
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import os
import pickle
import queue
import shutil
import struct
import threading
import warnings
from pathlib import Path
from typing import Any

from phoenix.bundle import unpack
from phoenix.errors import Failed
from phoenix.plan.engine import Recorded, reveal
from phoenix.plan.outdir import STAGING, check, mark
from phoenix.plan.writer import Secrets, command_guest, current_umask, write_private
from phoenix.resource_types import COMMAND

_FRAME = struct.Struct("!I")
_PIPE_BYTES = 1 << 20


class FileStream:
    """A child process writing the pushed files of the steps ``feed`` passes it."""

    def __init__(self, out: Path, stack: str, by_address: dict[str, str], config_secrets: dict[str, str],
                 with_secrets: bool):
        self.out, self.with_secrets = out, with_secrets
        self.staging = out / STAGING
        self._by_address = by_address
        self._pid = 0
        self._status = ""
        check(out)                               # a new, empty or previous plan directory only
        mark(out, stack)
        if self.staging.exists():
            shutil.rmtree(self.staging)          # left by an interrupted plan
        self.staging.mkdir()
        to_child, self._to_child = os.pipe()
        self._from_child, from_child = os.pipe()
        with contextlib.suppress(OSError):       # a larger pipe: the run need not wait on the child
            fcntl.fcntl(self._to_child, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
        with warnings.catch_warnings():
            # 3.12+ warns of forking with threads: the child takes no lock another thread could
            # hold (it makes files from what the pipe brings) and ends with os._exit.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            os.close(self._to_child)
            os.close(self._from_child)
            _child(to_child, from_child, self.staging, config_secrets, with_secrets)   # never returns
        os.close(to_child)
        os.close(from_child)
        self._pid = pid
        # A write to the pipe lets go of the GIL and then waits to take it back: made by a
        # registration thread, inside the engine's order lock, it held up every other
        # registration. ``feed`` only queues; one sender thread writes.
        self._queue: queue.SimpleQueue[list | None] = queue.SimpleQueue()
        self._sender = threading.Thread(target=self._send_all, name="phoenix-plan-files", daemon=True)
        self._sender.start()

    def feed(self, r: Recorded) -> None:
        """Pass the child what ``r`` adds: its secret outputs, and its bundle when it is a step that
        pushes files to a guest. Called by the engine for every resource, in recording order."""
        items: list[tuple[Any, ...]] = []
        for key in r.secret_outputs:
            items.append(("secret", f"{r.name}.{key}", reveal(r.outputs.get(key))))
        if r.type == COMMAND:
            stdin, guest = r.value("stdin"), command_guest(r, None, self._by_address)
            if isinstance(stdin, str) and stdin and guest is not None:
                items.append(("step", r.name, guest, stdin))
        if items:
            self._queue.put(items)

    def _send_all(self) -> None:
        """The sender thread: each queued list, framed, into the pipe, until None. Once the child
        is gone (it reports why to ``finish``) the rest is dropped."""
        while (items := self._queue.get()) is not None:
            if self._to_child < 0:
                continue
            payload = pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL)
            data = memoryview(_FRAME.pack(len(payload)) + payload)
            try:
                while data:
                    data = data[os.write(self._to_child, data):]
            except OSError:
                os.close(self._to_child)
                self._to_child = -1

    def finish(self) -> None:
        """Wait for the child to write the last file; Failed (and no staging left) if it could not."""
        if not self._pid:
            return
        self._queue.put([("end",)])
        self._close()
        if self._status:
            shutil.rmtree(self.staging, ignore_errors=True)
            raise Failed(f"writing the plan's files/ failed: {self._status}")

    def abort(self) -> None:
        """Stop the child (the run failed or the plan is refused) and remove what it wrote."""
        if self._pid:
            self._close()
        shutil.rmtree(self.staging, ignore_errors=True)

    def _close(self) -> None:
        """Stop the sender (after what is queued), close the pipe, and wait for the child."""
        self._queue.put(None)
        self._sender.join()
        if self._to_child >= 0:
            os.close(self._to_child)
            self._to_child = -1
        with os.fdopen(self._from_child, "rb") as stream:
            message = stream.read().decode(errors="replace")
        _, status = os.waitpid(self._pid, 0)
        self._pid = 0
        code = os.waitstatus_to_exitcode(status)
        self._status = "" if code == 0 else (message or f"the writer ended with status {code}")


def _child(read_fd: int, report_fd: int, staging: Path, config_secrets: dict[str, str],
           with_secrets: bool) -> None:
    """The child's whole life: write what the pipe brings until ``end``, then exit."""
    code = 1
    try:
        gc.disable()                    # short-lived: no collection walking the inherited heap
        secrets = Secrets()
        for key, value in config_secrets.items():
            secrets.add(key, value)
        mode = 0o600 if with_secrets else 0o644
        umask = current_umask()
        owners: dict[tuple[str, str], str] = {}
        written: list[tuple[str, str, int]] = []     # (target, content, secrets known when written)
        made: set[str] = set()
        with os.fdopen(read_fd, "rb") as stream:
            while True:
                head = stream.read(_FRAME.size)
                if len(head) < _FRAME.size:
                    raise Failed("the plan stopped before its last step")
                items = pickle.loads(stream.read(_FRAME.unpack(head)[0]))
                if items == [("end",)]:
                    break
                for item in items:
                    if item[0] == "secret":
                        secrets.add(item[1], item[2])
                        continue
                    _, step, guest, stdin = item
                    try:
                        files = unpack(stdin)
                    except ValueError:          # not a bundle: a step that pushes no files
                        continue
                    for f in files:
                        if owners.setdefault((guest, f.path), step) != step:
                            continue            # two owners: Plan.write refuses the plan
                        target = os.path.join(staging, guest, f.path.lstrip("/"))
                        folder = os.path.dirname(target)
                        if folder not in made:
                            os.makedirs(folder, exist_ok=True)
                            made.add(folder)
                        text = f.content if with_secrets else secrets.redact(f.content)
                        write_private(target, text, mode, umask)
                        written.append((target, f.content, len(secrets.values)))
        if not with_secrets:
            _redact_again(written, secrets, mode, umask)
        code = 0
    except BaseException as err:        # reported to the parent, which raises Failed
        os.write(report_fd, f"{type(err).__name__}: {err}".encode(errors="replace")[:4000])
    finally:
        os._exit(code)


def _redact_again(written: list[tuple[str, str, int]], secrets: Any, mode: int, umask: int) -> None:
    """Rewrite a file that holds a secret recorded after it was written (with every secret)."""
    known = list(secrets.values)
    for target, content, count in written:
        if count < len(known) and any(value in content for value in known[count:]):
            write_private(target, secrets.redact(content), mode, umask)
