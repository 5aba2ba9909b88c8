"""``connect-trials``: the embedded server and the demo from the command line.

connect-trials server start [--port N] [--master local[*]] [--state-dir DIR]
connect-trials server status | url | stop
connect-trials cluster start [--workers N] [--cores C] [--memory 1g] [--state-dir DIR]
connect-trials cluster status | url | stop
connect-trials demo [--max-evals N] [--parallelism N]

Servers and clusters keep their state (pid, port, token, logs) under $CONNECT_TRIALS_HOME, by
default ~/.connect-trials, whichever entry point started them (this CLI, make, Python). The
URLs printed here hide the token; `connect-trials server url` prints the whole URL, and only
when asked, for `export SPARK_REMOTE=$(connect-trials server url)`. A cluster's master takes
only applications with its secret, kept in its state folder's 0600 `secret.conf`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from connect_trials import server


def _server_dir(args: argparse.Namespace) -> Path:
    return Path(args.state_dir) if args.state_dir else server.DEFAULT_STATE_DIR / "server"


def _cmd_start(args: argparse.Namespace) -> int:
    state_dir = _server_dir(args)
    running = server.read_server_info(state_dir)
    if running is not None:
        print(f"already running: {running.public_url} (pid {running.pid}, master {running.master})")
        return 0
    srv = server.LocalConnectServer(port=args.port, master=args.master, state_dir=state_dir)
    print(f"starting Spark Connect server (master {args.master}) ...", flush=True)
    srv.start()
    print(srv.public_url)
    print(f"logs: {srv.log_path}")
    print("use it: export SPARK_REMOTE=$(connect-trials server url)   stop it: connect-trials server stop")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    running = server.read_server_info(_server_dir(args))
    if running is None:
        print("not running")
        return 1
    print(f"running: {running.public_url} (pid {running.pid}, master {running.master})")
    return 0


def _cmd_url(args: argparse.Namespace) -> int:
    """The Connect URL of the server, or of the cluster's server."""
    connect_dir = _cluster_dir(args) / "server" if args.command == "cluster" else _server_dir(args)
    running = server.read_server_info(connect_dir)
    if running is None:
        print("not running", file=sys.stderr)
        return 1
    print(running.url)  # the token included: for SPARK_REMOTE, not for logs
    return 0


def _cluster_dir(args: argparse.Namespace) -> Path:
    return Path(args.state_dir) if args.state_dir else server.DEFAULT_STATE_DIR / "cluster"


def _cmd_cluster_start(args: argparse.Namespace) -> int:
    state_dir = _cluster_dir(args)
    if server.read_cluster_info(state_dir) is not None:
        print(f"already running; see: connect-trials cluster status --state-dir {state_dir}")
        return 0
    print(f"starting a cluster of {args.workers} workers x {args.cores} cores ...", flush=True)
    started = time.monotonic()
    cluster = server.LocalCluster(
        workers=args.workers, cores=args.cores, memory=args.memory, state_dir=state_dir
    ).start()
    print(cluster.public_url)
    print(f"master: {cluster.master_url}  (started in {time.monotonic() - started:.0f} s)")
    print(f"logs: {state_dir / 'logs'}")
    print("use it: export SPARK_REMOTE=$(connect-trials cluster url)   stop it: connect-trials cluster stop")
    return 0


def _cmd_cluster_status(args: argparse.Namespace) -> int:
    state_dir = _cluster_dir(args)
    info = server.read_cluster_info(state_dir)
    running = server.read_server_info(state_dir / "server")
    if info is None or running is None:
        print("not running")
        return 1
    shape = f"{info['workers']} workers x {info['cores']} cores"
    print(f"running: {running.public_url} (master {running.master}, {shape})")
    return 0


def _cmd_cluster_stop(args: argparse.Namespace) -> int:
    state_dir = _cluster_dir(args)
    if server.read_cluster_info(state_dir) is None and server.read_server_info(state_dir / "server") is None:
        print("not running")
        return 0
    server.LocalCluster(state_dir=state_dir).stop()
    print("stopped")
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    state_dir = _server_dir(args)
    running = server.read_server_info(state_dir)
    if running is None:
        print("not running")
        return 0
    server.LocalConnectServer(port=running.port, state_dir=state_dir).stop()
    print(f"stopped (pid {running.pid})")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from connect_trials import demo

    return demo.main(max_evals=args.max_evals, parallelism=args.parallelism)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="connect-trials", description="connect-trials: hyperopt over Spark Connect"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    srv = commands.add_parser("server", help="the embedded local Spark Connect server")
    actions = srv.add_subparsers(dest="action", required=True)
    start = actions.add_parser("start", help="start it on a free loopback port and print its URL")
    start.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    start.add_argument("--master", default="local[*]", help="Spark master (default: local[*])")
    start.set_defaults(func=_cmd_start)
    status = actions.add_parser("status", help="say whether it runs, and where")
    status.set_defaults(func=_cmd_status)
    stop = actions.add_parser("stop", help="stop it")
    stop.set_defaults(func=_cmd_stop)
    url = actions.add_parser("url", help="print its URL with the token, for SPARK_REMOTE")
    url.set_defaults(func=_cmd_url)
    for sub in (start, status, stop, url):
        sub.add_argument("--state-dir", default=None, help="folder for its logs and pid file")

    clu = commands.add_parser("cluster", help="a local standalone cluster: master, workers, Connect server")
    cluster_actions = clu.add_subparsers(dest="action", required=True)
    cstart = cluster_actions.add_parser("start", help="start it and print its URL")
    cstart.add_argument("--workers", type=int, default=2)
    cstart.add_argument("--cores", type=int, default=2, help="cores per worker")
    cstart.add_argument("--memory", default="1g", help="memory per worker")
    cstart.set_defaults(func=_cmd_cluster_start)
    cstatus = cluster_actions.add_parser("status", help="say whether it runs, and where")
    cstatus.set_defaults(func=_cmd_cluster_status)
    curl = cluster_actions.add_parser("url", help="print its URL with the token, for SPARK_REMOTE")
    curl.set_defaults(func=_cmd_url)
    cstop = cluster_actions.add_parser("stop", help="stop it")
    cstop.set_defaults(func=_cmd_cluster_stop)
    for sub in (cstart, cstatus, curl, cstop):
        sub.add_argument("--state-dir", default=None, help="folder for its logs and pid files")

    demo = commands.add_parser("demo", help="tune a scikit-learn model on the embedded server")
    demo.add_argument("--max-evals", type=int, default=24)
    demo.add_argument("--parallelism", type=int, default=2)
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except server.ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
