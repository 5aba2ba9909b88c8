"""The benchmark's own parts that its verdicts rest on: the byte-counting relay, the pairing
of runs by repeat, and the README writer. Pure logic and loopback sockets: no Spark."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from benchmarks import report
from benchmarks.analysis import paired_ratios, summarize
from benchmarks.measure import RunResult, WireBytes
from benchmarks.workloads import CONNECT_TRIALS, FLOOR_RAW, Workload


def _echo_server() -> tuple[socket.socket, threading.Thread]:
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


def test_wire_relay_counts_every_byte_the_client_sends_and_passes_replies_back() -> None:
    listener, thread = _echo_server()
    relay = WireBytes(listener.getsockname()[1])
    try:
        assert relay.url_for(f"sc://localhost:{listener.getsockname()[1]}/;token=t").startswith(
            f"sc://localhost:{relay.port}/"
        )
        payload = bytes(range(256)) * 4096  # 1 MB
        with socket.create_connection(("127.0.0.1", relay.port)) as client:
            client.sendall(payload)
            client.shutdown(socket.SHUT_WR)
            echoed = b""
            while data := client.recv(65536):
                echoed += data
        assert echoed == payload
        assert relay.sent == len(payload)
    finally:
        relay.close()
        listener.close()
        thread.join(5)


def test_paired_ratios_pair_runs_of_the_same_repeat() -> None:
    workload = Workload(
        "overhead", n_trials=10, parallelism=2, repeats=2, systems=(FLOOR_RAW, CONNECT_TRIALS)
    )
    runs = [
        RunResult(FLOOR_RAW, "overhead", 1000, 1.0, n_trials=10),
        RunResult(FLOOR_RAW, "overhead", 1001, 4.0, n_trials=10),
        RunResult(CONNECT_TRIALS, "overhead", 1000, 1.5, n_trials=10),
        RunResult(CONNECT_TRIALS, "overhead", 1001, 4.4, n_trials=10),
    ]
    cells = summarize([workload], runs)

    ratios = paired_ratios(cells, CONNECT_TRIALS, FLOOR_RAW, "overhead", "per_trial_s")

    # Paired: 1.5 and 1.1. Medians of each side would give 2.95 / 2.5 = 1.18 instead.
    assert sorted(round(r, 3) for r in ratios) == [1.1, 1.5]


def test_readme_writer_replaces_only_what_lies_between_the_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.README_BEGIN}\nold table\n{report.README_END}\noutro\n")

    assert report.write_readme(readme, "new table\n")

    assert readme.read_text() == f"intro\n{report.README_BEGIN}\nnew table\n{report.README_END}\noutro\n"


def test_readme_writer_leaves_a_readme_without_markers_alone(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("intro\n")

    assert not report.write_readme(readme, "new table\n")
    assert readme.read_text() == "intro\n"
