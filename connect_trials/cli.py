"""``connect-trials``: the embedded server and the demo from the command line.

connect-trials server start [--port N] [--master local[*]] [--state-dir DIR]
connect-trials server status
connect-trials server stop
connect-trials demo [--max-evals N] [--parallelism N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from connect_trials import server


def _server_dir(args: argparse.Namespace) -> Path:
    return Path(args.state_dir) if args.state_dir else server.DEFAULT_STATE_DIR / "server"


def _cmd_start(args: argparse.Namespace) -> int:
    state_dir = _server_dir(args)
    running = server.read_server_info(state_dir)
    if running is not None:
        print(f"already running: {running.url} (pid {running.pid}, master {running.master})")
        return 0
    srv = server.LocalConnectServer(port=args.port, master=args.master, state_dir=state_dir)
    print(f"starting Spark Connect server (master {args.master}) ...", flush=True)
    srv.start()
    print(srv.url)
    print(f"logs: {srv.log_path}")
    print(f"use it: SPARK_REMOTE={srv.url}   stop it: connect-trials server stop")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    running = server.read_server_info(_server_dir(args))
    if running is None:
        print("not running")
        return 1
    print(f"running: {running.url} (pid {running.pid}, master {running.master})")
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
    for sub in (start, status, stop):
        sub.add_argument("--state-dir", default=None, help="folder for its logs and pid file")

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
