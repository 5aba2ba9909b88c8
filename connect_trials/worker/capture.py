"""What a trial prints: its last ``OUTPUT_TAIL_BYTES`` kept for ``trial["misc"]["output"]``,
and all of it still shown where its host shows output.

On an executor (:class:`PipeCapture`), file descriptors 1 and 2 point at a pipe of the
trial's own while it runs, so prints, logging, C extensions and subprocesses are captured in
the order they were written. A reader thread keeps the tail in memory and forwards
everything, as it comes, to the worker's own stderr (the executor's log). Nothing goes to
disk and memory stays bounded, whatever the objective prints.

When the trial ends, fds 1 and 2 are restored. A child the trial started that lives on (a
joblib/loky pool, a multiprocessing forkserver) still holds the trial's pipe: the reader
keeps forwarding what it writes to the worker's stderr until its last writer closes it, and
never takes it into this trial's output or a later one's. The read end stays open until
then, so such a child never gets SIGPIPE. While the trial runs, ``sys.stdout`` and
``sys.stderr`` write straight to fds 1 and 2 (unbuffered, so Python and C writes keep their
order): a logging handler a trial configured then writes wherever fd 2 points at the time,
never to a descriptor that was closed and reused for another file.

In the user's process (:class:`TeeCapture`, debug mode) only ``sys.stdout`` and
``sys.stderr`` are captured, at the Python level, and still written through to the terminal
or IDE: the debugger talks through them.
"""

from __future__ import annotations

import io
import os
import sys
import threading
from typing import Any

from connect_trials.worker.host import Host

# What a trial keeps of its output: the last 64 KiB, starting at a whole line.
OUTPUT_TAIL_BYTES = 64 * 1024
_READ_BYTES = 64 * 1024
# How long the end of a trial waits for the reader to take what the trial wrote (already in
# the pipe by then: the wait is for a thread that is busy forwarding it, not for new output).
_TAIL_WAIT_S = 30.0


class OutputCapture:
    """Captures from ``start`` to ``stop``; ``stop`` returns the tail of what was written."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> str:
        raise NotImplementedError


def output_capture(host: Host) -> OutputCapture:
    return PipeCapture() if host is Host.EXECUTOR else TeeCapture()


class OutputTail:
    """The last ``OUTPUT_TAIL_BYTES`` of a byte stream, in at most about twice that memory."""

    def __init__(self) -> None:
        self._kept = bytearray()
        self._lock = threading.Lock()
        self.total_bytes = 0

    def add(self, data: bytes) -> None:
        with self._lock:
            self._kept += data
            self.total_bytes += len(data)
            if len(self._kept) > 2 * OUTPUT_TAIL_BYTES:
                del self._kept[: -(OUTPUT_TAIL_BYTES + 1)]

    def text(self) -> str:
        """The tail as text, from the first whole line in it (all of it when nothing was cut)."""
        with self._lock:
            kept = bytes(self._kept[-(OUTPUT_TAIL_BYTES + 1) :])
            total = self.total_bytes
        if total > OUTPUT_TAIL_BYTES:
            before, kept = kept[:1], kept[1:]
            if before != b"\n" and b"\n" in kept:  # the cut fell inside a line: drop its end
                kept = kept[kept.index(b"\n") + 1 :]
        return kept.decode("utf-8", errors="replace")


class PipeCapture(OutputCapture):
    """fds 1 and 2 into a pipe of the trial's own; see the module's docstring."""

    def __init__(self) -> None:
        self._saved_fds: tuple[int, int] | None = None
        self._saved_streams: tuple[Any, Any] | None = None
        self._reader: _PipeReader | None = None

    def start(self) -> None:
        _flush_standard_streams()
        read_end, write_end = os.pipe()  # neither inherited by subprocesses until dup2'ed below
        saved = (os.dup(1), os.dup(2))
        reader = _PipeReader(read_end, forward_to=os.dup(saved[1]))
        reader.start()
        os.dup2(write_end, 1)
        os.dup2(write_end, 2)
        os.close(write_end)
        self._saved_fds, self._reader = saved, reader
        self._saved_streams = (sys.stdout, sys.stderr)
        sys.stdout, sys.stderr = _unbuffered_text(1), _unbuffered_text(2)

    def stop(self) -> str:
        if self._reader is None or self._saved_fds is None or self._saved_streams is None:
            return ""
        _flush_standard_streams()
        sys.stdout, sys.stderr = self._saved_streams
        for target, saved in zip((1, 2), self._saved_fds, strict=True):
            os.dup2(saved, target)
            os.close(saved)
        reader, self._reader = self._reader, None
        return reader.end_of_trial()


class _PipeReader:
    """Reads a trial's pipe until its last writer closes it: into the tail until the trial
    ends, to the worker's stderr all along."""

    def __init__(self, pipe: int, forward_to: int) -> None:
        self.tail = OutputTail()
        self._pipe = pipe
        self._forward_to = forward_to
        self._wake_read, self._wake_write = os.pipe()
        self._tail_closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="connect-trials-output", daemon=True)

    def start(self) -> None:
        try:
            self._thread.start()
        except BaseException:
            for fd in (self._pipe, self._forward_to, self._wake_read, self._wake_write):
                os.close(fd)
            raise

    def end_of_trial(self) -> str:
        """Called once fds 1 and 2 are restored: what the trial wrote is in the pipe."""
        try:
            os.write(self._wake_write, b"!")
        except OSError:  # the reader is gone already (the trial closed fds 1 and 2)
            pass
        if self._tail_closed.wait(_TAIL_WAIT_S):
            os.close(self._wake_read)  # the reader does not look at it any more
        os.close(self._wake_write)
        return self.tail.text()

    def _run(self) -> None:
        import select

        poller = select.poll()
        poller.register(self._pipe, select.POLLIN)
        poller.register(self._wake_read, select.POLLIN)
        try:
            while True:
                ready = {fd for fd, _ in poller.poll()}
                if self._wake_read in ready and not self._tail_closed.is_set():
                    # Take exactly what is in the pipe now: the trial's. Later bytes come from
                    # the children it left behind.
                    waiting = _bytes_waiting(self._pipe)
                    while waiting > 0 and (chunk := os.read(self._pipe, min(waiting, _READ_BYTES))):
                        self._take(chunk)
                        waiting -= len(chunk)
                    poller.unregister(self._wake_read)
                    self._tail_closed.set()
                    continue
                if self._pipe in ready:
                    chunk = os.read(self._pipe, _READ_BYTES)
                    if not chunk:  # no writer is left
                        return
                    self._take(chunk)
        except OSError:
            pass
        finally:
            self._tail_closed.set()
            os.close(self._pipe)
            if self._forward_to >= 0:
                os.close(self._forward_to)

    def _take(self, chunk: bytes) -> None:
        if not self._tail_closed.is_set():
            self.tail.add(chunk)
        view = memoryview(chunk)
        while view and self._forward_to >= 0:
            try:
                view = view[os.write(self._forward_to, view) :]
            except OSError:  # the worker's stderr is gone: keep reading, so writers never block
                os.close(self._forward_to)
                self._forward_to = -1


class TeeCapture(OutputCapture):
    """``sys.stdout``/``sys.stderr`` into the tail and still to the streams they stand in for."""

    def __init__(self) -> None:
        self.tail = OutputTail()
        self._tees: tuple[_Tee, _Tee] | None = None
        self._saved_streams: tuple[Any, Any] | None = None

    def start(self) -> None:
        _flush_standard_streams()
        self._saved_streams = (sys.stdout, sys.stderr)
        self._tees = (_Tee(self.tail, sys.stdout), _Tee(self.tail, sys.stderr))
        sys.stdout, sys.stderr = self._tees

    def stop(self) -> str:
        if self._tees is None or self._saved_streams is None:
            return ""
        _flush_standard_streams()
        for tee in self._tees:
            tee.detach_tail()  # a handler that kept one writes only to the user's stream now
        sys.stdout, sys.stderr = self._saved_streams
        self._tees = None
        return self.tail.text()


class _Tee:
    """A text stream writing to a trial's tail and to the stream it stands in for."""

    def __init__(self, tail: OutputTail, shown: Any) -> None:
        self._tail: OutputTail | None = tail
        self._shown = shown

    def detach_tail(self) -> None:
        self._tail = None

    def write(self, text: str) -> int:
        if self._tail is not None:
            self._tail.add(text.encode("utf-8", errors="backslashreplace"))
        written = self._shown.write(text)
        return len(text) if written is None else int(written)

    def flush(self) -> None:
        _flush(self._shown)

    def __getattr__(self, name: str) -> Any:  # isatty, encoding, fileno, ...: the shown stream's
        return getattr(self._shown, name)


def _unbuffered_text(fd: int) -> io.TextIOWrapper:
    """A text stream on ``fd`` that writes at once and never closes it."""
    raw = io.FileIO(fd, "wb", closefd=False)
    return io.TextIOWrapper(raw, encoding="utf-8", errors="backslashreplace", write_through=True)


def _bytes_waiting(fd: int) -> int:
    import array
    import fcntl
    import termios

    count = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, count, True)
    return count[0]


def _flush_standard_streams() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        _flush(stream)


def _flush(stream: Any) -> None:
    try:
        stream.flush()
    except Exception:  # noqa: BLE001 - a closed or odd stream is not the trial's failure
        pass
