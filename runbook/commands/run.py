"""`runbook run`: the exporter and the responder together in one process, on embedded defaults."""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from exporter import app as exporter_app
from exporter.collectors import Options
from exporter.resources import ConfigError
from responder import app as responder_app
from responder.command import TOKEN_ENV, read_token
from responder.store import StoreError, open_store
from runbook import logs
from runbook.eventloop import freeze_startup_heap, new_event_loop
from runbook.loader import LoadedRunbook, load_or_report

DEFAULT_RUNBOOK = Path(__file__).resolve().parents[1] / "default_runbook.yml"
EXPORTER_LISTEN = "127.0.0.1:9817"
RESPONDER_LISTEN = "127.0.0.1:9818"
TOKEN_FILE = "webhook_token"  # noqa: S105 - a file name, not a secret

HELP = "run the exporter and the responder together in one process (no services needed)"
EXAMPLES = (
    "  runbook run                          # watch this host, page on memory and disk\n"
    "  runbook run --runbook runbook.yml --data-dir /var/lib/runbook\n"
    "  runbook run --runbook runbook.yml --exporter-listen 0.0.0.0:9817 \\\n"
    "      --responder-listen 0.0.0.0:9818 --token-file /run/secrets/webhook_token\n"
)


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT (an IPv6 host in brackets) as host and port."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:9818)")
    return host.strip("[]") or "127.0.0.1", int(port)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runbook", metavar="FILE",
                        help="the runbook file (default: the built-in one, which watches the "
                             "host and pages on memory and disk)")
    parser.add_argument("--exporter-listen", type=parse_listen, default=EXPORTER_LISTEN,
                        metavar="HOST:PORT",
                        help=f"where the exporter serves /metrics (default {EXPORTER_LISTEN})")
    parser.add_argument("--responder-listen", type=parse_listen, default=RESPONDER_LISTEN,
                        metavar="HOST:PORT",
                        help=f"where the responder takes webhooks (default {RESPONDER_LISTEN})")
    parser.add_argument("--data-dir", default="data", metavar="DIR",
                        help="the responder's SQLite store, log positions and a generated "
                             "webhook token (default ./data)")
    parser.add_argument("--token-file", metavar="FILE",
                        help=f"file holding the webhook bearer token (else ${TOKEN_ENV}, else "
                             f"DATA_DIR/{TOKEN_FILE}, generated if missing)")
    parser.add_argument("--store", metavar="URL",
                        help="postgresql://... to share state, or sqlite:///PATH "
                             "(default: SQLite in --data-dir)")
    parser.add_argument("--public-url", default="", metavar="URL",
                        help="the responder's URL as humans reach it (links in pages)")
    logs.add_arguments(parser)


def ensure_token(data_dir: Path) -> tuple[str, Path, bool]:
    """The token kept in DATA_DIR, generated (mode 0600) when missing; (token, path, created)."""
    path = data_dir / TOKEN_FILE
    if path.exists():
        token = path.read_text(encoding="utf-8").strip()
        if token:
            return token, path, False
        path.unlink()
    data_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    return token, path, True


def _mode(path: Path) -> str:
    """The token file's mode as it is, and a warning when others than its owner can read it."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o044:
        return f"mode {mode:04o}: readable by others than its owner, chmod 0600 unless meant"
    return f"mode {mode:04o}"


@dataclass
class Site:
    """One app served on one address."""

    name: str
    app: web.Application
    host: str
    port: int


async def serve(sites: list[Site], ready: str) -> None:
    """Serve every app until SIGTERM or SIGINT, then stop them in reverse order."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runners: list[web.AppRunner] = []
    try:
        for site in sites:
            runner = web.AppRunner(site.app, access_log=None, handle_signals=False)
            await runner.setup()
            runners.append(runner)
            await web.TCPSite(runner, site.host, site.port).start()
        print(ready, file=sys.stderr, flush=True)
        await stop.wait()
        print("runbook run: stopping", file=sys.stderr, flush=True)
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def _load(path: str | None) -> LoadedRunbook | None:
    return load_or_report(path or DEFAULT_RUNBOOK)


def run(args: argparse.Namespace) -> int:
    logs.setup(args.log_level, args.log_format)
    loaded = _load(args.runbook)
    if loaded is None:
        return 1
    data_dir = Path(args.data_dir)
    try:
        token = read_token(args.token_file)
        if not token and args.token_file:
            raise ValueError(f"--token-file {args.token_file} is empty")
        # Everything that can be refused is checked before a token file is written.
        store = open_store(args.store, data_dir)
        store.claim()  # a second responder on this data dir must not leave a token behind
        exporter = exporter_app.build_app(loaded, options=Options(state_dir=str(data_dir)))
        if not token:
            token, path, created = ensure_token(data_dir)
            what = "generated a webhook token in" if created else "webhook token from"
            print(f"runbook run: {what} {path} ({_mode(path)}): give Alertmanager that file as "
                  "the responder receiver's credentials_file", file=sys.stderr, flush=True)
        logs.setup(args.log_level, args.log_format,
                   logs.secret_values(loaded.runbook, token, args.store or ""))
        data_dir.mkdir(parents=True, exist_ok=True)
        responder = responder_app.build_app(
            loaded, store, responder_app.Settings(token=token, public_url=args.public_url))
        responder.on_startup.append(freeze_startup_heap)
    except (OSError, ValueError, ConfigError) as exc:
        print(f"runbook run: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"runbook run: {exc}", file=sys.stderr)
        return 1
    (ehost, eport), (rhost, rport) = args.exporter_listen, args.responder_listen
    source = args.runbook or f"{DEFAULT_RUNBOOK.name} (built in)"
    ready = (f"runbook run: {loaded.service} from {source}; exporter on "
             f"http://{ehost}:{eport}/metrics, responder on http://{rhost}:{rport}/alerts "
             f"(store {store.dialect})")
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(serve([Site("exporter", exporter, ehost, eport),
                              Site("responder", responder, rhost, rport)], ready))
    except OSError as exc:
        print(f"runbook run: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"runbook run: {exc}", file=sys.stderr)
        return 1
    return 0
