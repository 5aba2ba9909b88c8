"""How the benchmark measures: one run's record, and the probes that fill it.

Every probe is on the client: wall time, completion times of trials, the search algorithm's
own suggestion time (the algorithm is wrapped), the client's peak resident memory (sampled),
the CPU time of the process that runs the search (user + system, all its threads), the bytes
the client puts on the wire to Spark Connect (a gRPC interceptor that sums the serialized
size of every request message, so loopback noise from other processes does not count), and
the time connect-trials spends writing its ``trials_save_file`` (``SaveProbe``).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class RunResult:
    """One run of one system on one workload. Times are seconds; ``*_at_s`` are measured
    from the start of the run."""

    system: str
    workload: str
    seed: int
    wall_s: float
    n_trials: int = 0
    n_ok: int = 0
    best_loss: float | None = None
    completed_at_s: list[float] = field(default_factory=list)  # sorted, one per finished trial
    trial_latency_s: list[float] = field(default_factory=list)  # booked -> result back, by trial id
    suggest_spans_s: list[tuple[float, float]] = field(default_factory=list)
    peak_rss_mb: float | None = None
    start_rss_mb: float | None = None
    cpu_s: float | None = None  # CPU time (user + system) of the process that ran the search
    bytes_sent: int | None = None
    bytes_by_method: dict[str, int] = field(default_factory=dict)
    bytes_note: str = ""
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def suggest_s(self) -> float:
        return sum(end - start for start, end in self.suggest_spans_s)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunResult:
        data = dict(data)
        data["suggest_spans_s"] = [tuple(span) for span in data.get("suggest_spans_s", [])]
        return cls(**data)


class SuggestTimer:
    """Wraps a hyperopt ``algo`` and records when each of its calls ran."""

    def __init__(self, algo: Callable[..., Any]) -> None:
        self.spans: list[tuple[float, float]] = []

        @functools.wraps(algo)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.time()
            try:
                return algo(*args, **kwargs)
            finally:
                self.spans.append((start, time.time()))

        self.algo = timed

    def spans_from(self, t0: float) -> list[tuple[float, float]]:
        return [(start - t0, end - t0) for start, end in self.spans]


class MemorySampler:
    """Peak resident memory of this process while the block runs (sampled every 50 ms)."""

    def __init__(self, interval_s: float = 0.05) -> None:
        import psutil

        self._process = psutil.Process()
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.start_mb = 0.0
        self.peak_mb = 0.0

    def _rss_mb(self) -> float:
        return float(self._process.memory_info().rss) / 2**20

    def _sample(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.peak_mb = max(self.peak_mb, self._rss_mb())

    def __enter__(self) -> MemorySampler:
        self.start_mb = self.peak_mb = self._rss_mb()
        self._thread = threading.Thread(target=self._sample, name="bench-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_mb = max(self.peak_mb, self._rss_mb())


def _message_size(message: Any) -> int:
    size = getattr(message, "ByteSize", None)
    return int(size()) if size is not None else 0


def _grpc_interceptor_bases() -> tuple[type, ...]:
    import grpc

    return (
        grpc.UnaryUnaryClientInterceptor,
        grpc.UnaryStreamClientInterceptor,
        grpc.StreamUnaryClientInterceptor,
        grpc.StreamStreamClientInterceptor,
    )


class RequestBytes(*_grpc_interceptor_bases()):  # type: ignore[misc]
    """A gRPC client interceptor that sums the serialized size of every request message,
    per RPC method (``ExecutePlan``, ``AddArtifacts``, ...). Install it on the Spark Connect
    channel with ``DefaultChannelBuilder.add_interceptor``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_method: Counter[str] = Counter()

    def _add(self, method: str, message: Any) -> None:
        name = method.rsplit("/", 1)[-1]
        with self._lock:
            self._by_method[name] += _message_size(message)

    def _counted(self, method: str, messages: Iterator[Any]) -> Iterator[Any]:
        for message in messages:
            self._add(method, message)
            yield message

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self._add(details.method, request)
        return continuation(details, request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        self._add(details.method, request)
        return continuation(details, request)

    def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(details, self._counted(details.method, request_iterator))

    def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(details, self._counted(details.method, request_iterator))

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self._by_method)


class WireBytes:
    """A TCP relay on loopback in front of the Spark Connect server that counts every byte the
    client sends through it (gRPC framing and HTTP/2 headers included). A session built on
    ``url_for(server_url)`` cannot send an RPC the count misses, whichever channel, stub or
    thread sends it: unlike an interceptor, it does not depend on how the client builds its
    channels."""

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._lock = threading.Lock()
        self._sent = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, name="bench-wire-accept", daemon=True).start()

    def url_for(self, server_url: str) -> str:
        """``server_url`` (``sc://127.0.0.1:PORT/;...``) pointed at this relay instead."""
        return re.sub(rf":{self._target_port}(?=/|$)", f":{self.port}", server_url, count=1)

    @property
    def sent(self) -> int:
        with self._lock:
            return self._sent

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._target_port))
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, counted: bool) -> None:
        try:
            while data := source.recv(1 << 20):
                if counted:
                    with self._lock:
                        self._sent += len(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            sock.close()


class Probe:
    """Measures one run: wall clock, memory and request bytes around the block.

    with Probe(request_bytes, wire) as probe:
        ...run...
    probe.fill(result)

    With a ``wire`` relay, ``bytes_sent`` is what crossed it (everything the session sent);
    else the sum of the interceptor's request messages. ``bytes_by_method`` is the
    interceptor's breakdown either way.
    """

    def __init__(self, request_bytes: RequestBytes | None, wire: WireBytes | None = None) -> None:
        self._request_bytes = request_bytes
        self._wire = wire
        self._wire_before = 0
        self._memory = MemorySampler()
        self._bytes_before: Counter[str] = Counter()
        self.t0 = 0.0
        self.wall_s = 0.0
        self._cpu0 = 0.0
        self.cpu_s = 0.0
        self.bytes_by_method: dict[str, int] | None = None
        self.wire_bytes: int | None = None

    def __enter__(self) -> Probe:
        if self._request_bytes is not None:
            self._bytes_before = self._request_bytes.snapshot()
        if self._wire is not None:
            self._wire_before = self._wire.sent
        self._memory.__enter__()
        self.t0 = time.time()
        self._cpu0 = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_s = time.time() - self.t0
        self.cpu_s = time.process_time() - self._cpu0
        self._memory.__exit__(*exc)
        if self._request_bytes is not None:
            after = self._request_bytes.snapshot()
            after.subtract(self._bytes_before)
            self.bytes_by_method = {k: v for k, v in after.items() if v}
        if self._wire is not None:
            self.wire_bytes = self._wire.sent - self._wire_before

    def fill(self, result: RunResult) -> RunResult:
        result.wall_s = self.wall_s
        result.cpu_s = self.cpu_s
        result.peak_rss_mb = round(self._memory.peak_mb, 1)
        result.start_rss_mb = round(self._memory.start_mb, 1)
        if self.bytes_by_method is not None:
            result.bytes_by_method = self.bytes_by_method
            result.bytes_sent = sum(self.bytes_by_method.values())
        if self.wire_bytes is not None:
            result.bytes_sent = self.wire_bytes
            result.bytes_note = "every byte the session sent (TCP relay)"
        return result


# What connect-trials calls once per finished trial to write its trials_save_file, newest
# first: ``SaveJournal.trial_ended`` (an append-only journal) or ``save_trials`` (a whole
# pickle each time, as hyperopt does). The first one found is timed; none found: "not measured".
SAVE_PER_TRIAL = (("SaveJournal", "trial_ended"), (None, "save_trials"))
# What it calls once at fmin's end (compacting the journal), timed apart when present.
SAVE_AT_END = (("SaveJournal", "close"),)


class SaveProbe:
    """Times every call connect-trials makes to write its ``trials_save_file``, by wrapping
    the ``connect_trials.resume`` function its after-trial hook calls (``SAVE_PER_TRIAL``)
    while the block runs, and the end-of-fmin compaction apart (``SAVE_AT_END``).

    with SaveProbe() as saves:
        ...fmin...
    saves.per_trial_s  # one duration per call, in call order
    saves.name         # what was wrapped, or None: not measured
    """

    def __init__(self) -> None:
        self.name: str | None = None
        self.at_end_name: str | None = None
        self.per_trial_s: list[float] = []
        self.at_end_s: list[float] = []
        self._restore: list[Callable[[], None]] = []

    def __enter__(self) -> SaveProbe:
        try:
            from connect_trials import resume
        except ImportError:
            return self
        self.name = self._wrap(resume, SAVE_PER_TRIAL, self.per_trial_s)
        if self.name is not None and self.name.startswith("SaveJournal."):
            self.at_end_name = self._wrap(resume, SAVE_AT_END, self.at_end_s)
        return self

    def _wrap(self, module: Any, candidates: Any, into: list[float]) -> str | None:
        for owner_name, attr in candidates:
            owner = getattr(module, owner_name, None) if owner_name else module
            original = getattr(owner, attr, None) if owner is not None else None
            if not callable(original):
                continue

            @functools.wraps(original)
            def timed(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
                start = time.perf_counter()
                try:
                    return _original(*args, **kwargs)
                finally:
                    into.append(time.perf_counter() - start)

            setattr(owner, attr, timed)
            self._restore.append(functools.partial(setattr, owner, attr, original))
            return f"{owner_name}.{attr}" if owner_name else attr
        return None

    def __exit__(self, *exc: object) -> None:
        while self._restore:
            self._restore.pop()()


def utc_seconds(moment: datetime.datetime) -> float:
    """Epoch seconds of hyperopt's naive-UTC ``book_time`` / ``refresh_time``."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


def fill_from_hyperopt(result: RunResult, trials: Any, t0: float) -> RunResult:
    """Completion times, latencies and the best loss from a hyperopt ``Trials``."""
    from hyperopt import STATUS_OK

    finished = [t for t in trials.trials if t.get("refresh_time") is not None and t["state"] >= 2]
    result.n_trials = len(trials.trials)
    ok = [t for t in finished if t["result"].get("status") == STATUS_OK]
    result.n_ok = len(ok)
    result.completed_at_s = sorted(utc_seconds(t["refresh_time"]) - t0 for t in finished)
    result.trial_latency_s = [
        utc_seconds(t["refresh_time"]) - utc_seconds(t["book_time"])
        for t in sorted(finished, key=lambda t: t["tid"])
        if t.get("book_time") is not None
    ]
    losses = [t["result"]["loss"] for t in ok if t["result"].get("loss") is not None]
    result.best_loss = min(losses) if losses else None
    result.extras.update(_trial_phases(finished))
    return result


def _trial_phases(finished: list[dict[str, Any]]) -> dict[str, float]:
    """Where one trial's time goes, for trials that carry worker-side timestamps
    (connect-trials stores them in ``misc["connect_trials"]``): booked on the client -> the
    objective starts on the worker -> it ends -> the result is recorded on the client.
    Medians over the run's trials; one machine, one clock."""
    import statistics

    phases: dict[str, list[float]] = {"to_worker_s": [], "objective_s": [], "back_s": []}
    for trial in finished:
        stamps = trial["misc"].get("connect_trials") or {}
        started, ended = stamps.get("started_at"), stamps.get("finished_at")
        if started is None or ended is None or trial.get("book_time") is None:
            continue
        phases["to_worker_s"].append(started - utc_seconds(trial["book_time"]))
        phases["objective_s"].append(ended - started)
        phases["back_s"].append(utc_seconds(trial["refresh_time"]) - ended)
    return {f"median_{name}": statistics.median(values) for name, values in phases.items() if values}
