"""Queue actions that must not destroy what they were not asked to, on real Redis servers.

celery_purge deletes Celery queues only (never kombu's unacked tasks or any other key) and all
of a queue's priority lists; Celery actions verify a rediss:// broker's certificate and name;
rq_clean_registries runs no app code in the responder; rq_requeue_failed drops failed entries
whose job is gone instead of failing on them forever.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
import redis as redis_sync
from celery import Celery
from kombu import Connection
from rq import Callback, Queue, Retry, Worker
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, StartedJobRegistry

from responder.actions import run_action
from responder.actions.base import ActionContext, Status
from runbook.actions import CeleryPurgeParams, RqCleanParams, RqRequeueParams
from runbook.redis_tls import tls_options
from tests.actions_support import book, context
from tests.actions_workers import FIXED_KEY, flaky
from tests.servers import RedisServer, find_tool, free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[1]
RQ = str(Path(sys.executable).with_name("rq"))
BOOK = """
service: shop
watch:
  redis:
    - {name: broker, url_env: BROKER_URL}
"""
CALLED_KEY = "rbap:on-failure-ran"


def record_failure(job: Job, connection: redis_sync.Redis, *exc_info: Any) -> None:
    """The on_failure callback of the jobs below: app code, recording where it ran."""
    connection.rpush(CALLED_KEY, f"{job.id} pid={os.getpid()}")


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def _ctx(session: aiohttp.ClientSession, url: str, **labels: str) -> ActionContext:
    env = {"PATH": os.environ["PATH"], "BROKER_URL": url}
    return context(session, book(BOOK), labels={"alertname": "X", **labels}, env=env)


def _db(redis_server: RedisServer, db: int) -> Iterator[str]:
    address = f"redis://127.0.0.1:{redis_server.port}/{db}"
    yield address
    redis_sync.Redis.from_url(address).flushdb()


@pytest.fixture
def broker(redis_server: RedisServer) -> Iterator[str]:
    """Db 9 of the session's Redis, flushed afterwards."""
    yield from _db(redis_server, 9)


@pytest.fixture
def jobs(redis_server: RedisServer) -> Iterator[str]:
    """Db 10 of the session's Redis, flushed afterwards."""
    yield from _db(redis_server, 10)


def _types(conn: redis_sync.Redis, pattern: str = "*") -> dict[bytes, bytes]:
    """The keys matching `pattern` and their Redis types."""
    return {key: cast(bytes, conn.type(key)) for key in cast(list[bytes], conn.keys(pattern))}


def _callbacks_run(conn: redis_sync.Redis) -> list[str]:
    """The ids of the jobs record_failure ran for."""
    return [v.decode().split()[0] for v in cast(list[bytes], conn.lrange(CALLED_KEY, 0, -1))]


def _celery(url: str, **conf: Any) -> Celery:
    app = Celery("rbap-producer", broker=url, set_as_current=False)
    app.conf.update(**conf)
    return app


# --- celery_purge: only Celery queues ---------------------------------------------------------


@pytest.mark.parametrize(("queue", "labels"), [
    ("{{ labels.queue }}", {"queue": "unacked"}),
    ("{{ labels.queue }}", {"queue": "unacked_index"}),
    ("{{ labels.queue }}", {"queue": "unacked_mutex"}),
    ("_kombu.binding.celery", {}),
])
async def test_purge_refuses_kombus_own_keys(
    session: aiohttp.ClientSession, broker: str, queue: str, labels: dict[str, str]
) -> None:
    # A worker has taken a task (acks_late): kombu keeps it in `unacked` until it is acked, and
    # restores it from there if the worker dies.
    conn = redis_sync.Redis.from_url(broker)
    with Connection(broker) as kombu:
        inbox = kombu.SimpleQueue("celery")
        inbox.put({"task": "charge_card", "id": "t1"})
        taken = inbox.get(timeout=5)
        kept = _types(conn)
        assert {b"unacked", b"unacked_index", b"_kombu.binding.celery"} <= set(kept)

        params = CeleryPurgeParams(broker="broker", queue=queue, confirm=True)
        result = await run_action("celery_purge", params, _ctx(session, broker, **labels))
        assert _types(conn) == kept, result.output
        assert result.status is Status.FAILED, result.output
        assert "refused to purge" in result.output, result.output
        assert "kombu" in result.output, result.output

        taken.requeue()  # what a restore does: the task is back on its queue
        assert inbox.get(timeout=5).payload == {"task": "charge_card", "id": "t1"}
        inbox.close()


async def test_purge_refuses_a_key_that_is_no_list(
    session: aiohttp.ClientSession, broker: str
) -> None:
    # Any key a label names: here the hash of an RQ job sharing the broker's db.
    conn = redis_sync.Redis.from_url(broker)
    job = Queue("emails", connection=conn).enqueue(flaky, 1)
    params = CeleryPurgeParams(broker="broker", queue="{{ labels.queue }}", confirm=True)
    result = await run_action("celery_purge", params, _ctx(session, broker, queue=job.key))
    assert Job.fetch(job.id, connection=conn).get_status() is JobStatus.QUEUED, result.output
    assert result.status is Status.FAILED, result.output
    assert "is a Redis hash, not a Celery queue" in result.output
    assert "nothing deleted" in result.output


@pytest.mark.parametrize("steps", [None, list(range(10))])
async def test_purge_takes_every_priority_list(
    session: aiohttp.ClientSession, broker: str, steps: list[int] | None
) -> None:
    # kombu keeps priorities in lists of their own (`bulk\x06\x163`, ...): three with its
    # default steps, nine with the steps an app sets for Celery's full 0-9 range.
    options = {"priority_steps": steps} if steps else {}
    with _celery(broker, broker_transport_options=options) as app:
        for priority in range(10):
            app.send_task("rbap.add", (priority, 1), queue="bulk", priority=priority)
    conn = redis_sync.Redis.from_url(broker)
    lists = _types(conn, "bulk*")
    assert set(lists.values()) == {b"list"}
    assert len(lists) == (len(steps) if steps else 4)

    params = CeleryPurgeParams(broker="broker", queue="bulk", confirm=True)
    result = await run_action("celery_purge", params, _ctx(session, broker))
    assert result.status is Status.OK, result.output
    assert result.detail["purged"] == 10
    assert _types(conn, "bulk*") == {}


async def test_purge_ignores_the_responders_own_celery_env(
    session: aiohttp.ClientSession, broker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _celery(broker) as app:
        app.send_task("rbap.add", (1, 1), queue="bulk")
    # Celery prefers these to the broker an app is given: the runbook's target must win.
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("CELERY_BROKER_WRITE_URL", "redis://127.0.0.1:1/0")
    params = CeleryPurgeParams(broker="broker", queue="bulk", confirm=True)
    result = await run_action("celery_purge", params, _ctx(session, broker))
    assert result.status is Status.OK, result.output
    assert result.detail["purged"] == 1


# --- Celery over TLS: certificate and name verified ---------------------------------------------


@dataclass
class TlsRedis:
    port: int
    ca: Path


def _openssl(*argv: str) -> None:
    openssl = shutil.which("openssl") or "openssl"
    subprocess.run([openssl, *argv], check=True, capture_output=True, timeout=60)


def _certificates(directory: Path, san: str) -> tuple[Path, Path, Path]:
    """A CA of its own and a server certificate it signed for `san`."""
    ca_key, ca, key, csr, cert = (directory / n for n in
                                  ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt"))
    (directory / "san.ext").write_text(f"subjectAltName={san}\n")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
             "/CN=rbap-test-ca", "-keyout", str(ca_key), "-out", str(ca))
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=rbap-test",
             "-keyout", str(key), "-out", str(csr))
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
             "-CAcreateserial", "-days", "2", "-extfile", str(directory / "san.ext"),
             "-out", str(cert))
    return ca, cert, key


def _tls_redis(directory: Path, san: str) -> Iterator[TlsRedis]:
    ca, cert, key = _certificates(directory, san)
    port = free_port()
    server = subprocess.Popen(
        [find_tool("redis-server"), "--port", "0", "--tls-port", str(port), "--bind",
         "127.0.0.1", "--tls-cert-file", str(cert), "--tls-key-file", str(key),
         "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no", "--save", "",
         "--appendonly", "no", "--dir", str(directory)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield TlsRedis(port, ca)
    finally:
        server.terminate()
        server.wait(10)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    """A TLS-only redis-server whose certificate names 127.0.0.1, signed by a private CA."""
    yield from _tls_redis(tmp_path_factory.mktemp("tls"), "IP:127.0.0.1")


@pytest.fixture(scope="module")
def tls_redis_other_name(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    """The same, but its certificate names another host."""
    yield from _tls_redis(tmp_path_factory.mktemp("tls-other"), "DNS:elsewhere.example")


async def _purge_over_tls(session: aiohttp.ClientSession, url: str) -> Any:
    params = CeleryPurgeParams(broker="broker", queue="bulk", confirm=True)
    return await run_action("celery_purge", params, _ctx(session, url))


async def test_tls_broker_with_untrusted_certificate_is_refused(
    session: aiohttp.ClientSession, tls_redis: TlsRedis
) -> None:
    # The CA is in no trust store the responder uses: kombu alone would not even look.
    result = await _purge_over_tls(session, f"rediss://127.0.0.1:{tls_redis.port}/0")
    assert result.status is Status.FAILED, result.output
    assert "certificate verify failed" in result.output, result.output


async def test_tls_broker_certificate_for_another_name_is_refused(
    session: aiohttp.ClientSession, tls_redis_other_name: TlsRedis
) -> None:
    # A CA the URL trusts signed it, but for another host.
    server = tls_redis_other_name
    url = f"rediss://127.0.0.1:{server.port}/0?ssl_ca_certs={server.ca}"
    result = await _purge_over_tls(session, url)
    assert result.status is Status.FAILED, result.output
    assert "certificate verify failed" in result.output, result.output
    assert "IP address mismatch" in result.output or "hostname" in result.output, result.output


async def test_tls_broker_verified_with_the_urls_ca(
    session: aiohttp.ClientSession, tls_redis: TlsRedis
) -> None:
    url = f"rediss://127.0.0.1:{tls_redis.port}/0?ssl_ca_certs={tls_redis.ca}"
    with _celery(url) as app:
        for i in range(3):
            app.send_task("rbap.add", (i, i), queue="bulk")
    result = await _purge_over_tls(session, url)
    assert result.status is Status.OK, result.output
    assert result.detail["purged"] == 3


async def test_tls_opt_out_in_the_url_is_respected(
    session: aiohttp.ClientSession, tls_redis: TlsRedis
) -> None:
    # As for every Redis client of the project (runbook/redis_tls.py): the URL's options win
    # (and as with redis-py, turning the chain check off takes the name check with it).
    url = (f"rediss://127.0.0.1:{tls_redis.port}/0"
           "?ssl_cert_reqs=none&ssl_check_hostname=false")
    result = await _purge_over_tls(session, url)
    assert result.status is Status.OK, result.output


async def test_a_url_turning_certificate_checks_off_alone_still_connects(
    session: aiohttp.ClientSession, tls_redis: TlsRedis
) -> None:
    # ssl_cert_reqs=none without ssl_check_hostname=false: a name check without a certificate
    # is a combination Python's ssl refuses, so no connection was made at all.
    url = f"rediss://127.0.0.1:{tls_redis.port}/0?ssl_cert_reqs=none"
    result = await _purge_over_tls(session, url)
    assert result.status is Status.OK, result.output
    with redis_sync.Redis.from_url(url, socket_timeout=10, **tls_options(url)) as conn:
        assert conn.ping()


# --- rq_requeue_failed: dangling failed entries -------------------------------------------------


def _burst(url: str, *queues: str) -> subprocess.CompletedProcess[str]:
    """Run a real RQ worker until its queues are empty."""
    done = subprocess.run([RQ, "worker", "--burst", "--url", url, "--path", str(ROOT), *queues],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stdout + done.stderr
    return done


async def test_requeue_drops_entries_whose_job_is_gone(
    session: aiohttp.ClientSession, jobs: str
) -> None:
    conn = redis_sync.Redis.from_url(jobs)
    queue = Queue("default", connection=conn)
    ids = [queue.enqueue(flaky, i).id for i in range(3)]
    await asyncio.to_thread(_burst, jobs, "default")
    failed = FailedJobRegistry(queue=queue)
    assert sorted(failed.get_job_ids()) == sorted(ids)
    conn.delete(Job.key_for(ids[0]))  # its hash expired (or was evicted)
    conn.set(FIXED_KEY, "1")

    params = RqRequeueParams(redis="broker", queue="default")
    first = await run_action("rq_requeue_failed", params, _ctx(session, jobs))
    assert first.status is Status.OK, first.output
    assert sorted(first.detail["requeued"]) == sorted(ids[1:])
    assert first.detail["dangling"] == [ids[0]]
    assert "no longer exists" in first.output
    assert failed.get_job_ids() == []

    again = await run_action("rq_requeue_failed", params, _ctx(session, jobs))
    assert again.status is Status.OK, again.output
    assert again.detail["requeued"] == []
    assert again.detail["dangling"] == []


# --- rq_clean_registries: abandoned started jobs, no app code in the responder ----------------


def _abandon(queue: Queue) -> Job:
    """The next job of `queue`, started as a real rq worker does; then that worker dies."""
    taken = Queue.dequeue_any([queue], None, connection=queue.connection)
    assert taken is not None
    job, _ = taken
    worker = Worker([queue], connection=queue.connection, name=f"gone-{job.id}")
    execution = worker.prepare_execution(job)
    worker.prepare_job_execution(job)
    # Its last heartbeat lapses at once (a live worker renews it every few seconds).
    with queue.connection.pipeline() as pipe:
        execution.heartbeat(job.started_job_registry, 0, pipe)
        pipe.execute()
    return job


async def test_clean_fails_abandoned_jobs_as_rq_does(
    session: aiohttp.ClientSession, jobs: str
) -> None:
    conn = redis_sync.Redis.from_url(jobs)
    queue = Queue("default", connection=conn)
    plain = queue.enqueue(flaky, 1, failure_ttl=600)
    retried = queue.enqueue(flaky, 2, retry=Retry(max=1))
    gone = queue.enqueue(flaky, 3)
    for _ in range(3):
        _abandon(queue)
    conn.delete(Job.key_for(gone.id))
    started = StartedJobRegistry(queue=queue)
    assert conn.zcard(started.key) == 3

    result = await run_action("rq_clean_registries", RqCleanParams(redis="broker", queue="default"),
                              _ctx(session, jobs))
    assert result.status is Status.OK, result.output
    assert result.detail["started"]["failed"] == [plain.id]
    assert result.detail["started"]["retried"] == [retried.id]
    assert result.detail["started"]["dangling"] == [gone.id]
    assert result.detail["registries"]["started"] == {"before": 3, "after": 0}
    assert "moved 1 abandoned started jobs to failed" in result.output

    plain = Job.fetch(plain.id, connection=conn)
    assert plain.get_status() is JobStatus.FAILED
    assert plain.id in FailedJobRegistry(queue=queue).get_job_ids()
    latest = plain.latest_result()
    assert latest is not None
    assert "AbandonedJobError" in (latest.exc_string or "")
    retried = Job.fetch(retried.id, connection=conn)
    assert retried.retries_left == 0
    assert queue.get_job_ids() == [retried.id]


async def test_clean_leaves_jobs_with_a_callback_to_rq_workers(
    session: aiohttp.ClientSession, jobs: str
) -> None:
    conn = redis_sync.Redis.from_url(jobs)
    queue = Queue("default", connection=conn)
    callback = Callback(f"{__name__}.record_failure")
    job = queue.enqueue(flaky, 1, on_failure=callback)
    _abandon(queue)
    started = StartedJobRegistry(queue=queue)

    result = await run_action("rq_clean_registries", RqCleanParams(redis="broker", queue="default"),
                              _ctx(session, jobs))
    assert result.status is Status.OK, result.output
    assert result.detail["started"]["left"] == [job.id]
    assert "left 1 abandoned started jobs to rq workers" in result.output
    assert "on_failure" in result.output
    assert _callbacks_run(conn) == []  # no app code ran in the responder
    assert job.id in started.get_job_ids(cleanup=False)

    # A worker's registry maintenance (at start, then every 10 minutes) takes it from there.
    await asyncio.to_thread(_burst, jobs, "default")
    assert _callbacks_run(conn) == [job.id]
    assert Job.fetch(job.id, connection=conn).get_status() is JobStatus.FAILED
    assert started.get_job_ids(cleanup=False) == []
