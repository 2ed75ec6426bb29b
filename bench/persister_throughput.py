"""Throughput of one ``earshot persister`` process: finals into MariaDB, partials into Redis.

Starts a private Redis and MariaDB (as the integration tests do), fills a spool with records the
way a gateway writes them (sessions interleaved), starts ``python -m earshot persister`` on it
and times how long it takes to drain the spool, for each batch size:

* finals/s: a spool of finals only (50 sessions interleaved) drained into a fresh database: one
  transaction per batch (session rows, INSERT IGNORE of the segments), then the Redis counters;
* partial updates/s: a spool of partials only (200 sessions round-robin, so a batch of up to 100
  holds no two partials of a session and nothing is coalesced away) drained into Redis, one
  pipeline per batch;
* CPU: the persister process's CPU seconds over the drain, as % of one core, and the rate per
  core (rate / CPU fraction).

The clock starts when the persister answers /health (it drains from its first moment; the
difference is a few ms) and stops when the spool directory holds no stream any more.

Usage: ``python -m bench.persister_throughput [--batch-sizes 1 10 100] [--finals N] [--partials N]``.
Writes ``bench/reports/persister_throughput.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from bench import procstats
from earshot.events import Partial, Segment, SessionId
from earshot.persistence import spool
from earshot.persistence.writing import SpoolWriter
from tests.servers import MariaDbServer, RedisServer, free_port

REPORT = Path(__file__).parent / "reports" / "persister_throughput.md"


async def _fill(spool_dir: Path, records: list[Segment | Partial]) -> None:
    writer = SpoolWriter(spool_dir, segment_bytes=8 << 20, max_bytes=1 << 40)
    writer.start()
    try:
        for record in records:
            writer.append_nowait(record)
        # One durable append at the end flushes (and fsyncs) everything queued before it.
        await writer.append(records[-1])
    finally:
        await writer.close()


def _finals(count: int, sessions: int) -> list[Segment | Partial]:
    now = datetime.now(UTC)
    return [
        Segment(SessionId(f"bench-{n % sessions:03d}"), n // sessions + 1, f"final text {n}", now)
        for n in range(count)
    ]


def _partials(count: int, sessions: int) -> list[Segment | Partial]:
    now = datetime.now(UTC)
    return [
        Partial(SessionId(f"bench-{n % sessions:03d}"), 1, f"partial text number {n}", now)
        for n in range(count)
    ]


def _drain(
    spool_dir: Path, *, batch_size: int, segments_url: str, partials_url: str, log: Path
) -> tuple[float, float]:
    """Run a persister until the spool is empty: (wall seconds, persister CPU seconds)."""
    port = free_port()
    env = {
        **os.environ,
        "EARSHOT_SPOOL_DIR": str(spool_dir),
        "EARSHOT_SEGMENTS_URL": segments_url,
        "EARSHOT_PARTIALS_URL": partials_url,
        "EARSHOT_PERSISTER_PORT": str(port),
        "EARSHOT_PERSISTER_BATCH_SIZE": str(batch_size),
        "EARSHOT_LOG_LEVEL": "warning",
    }
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "earshot", "persister"], env=env, stdout=out, stderr=out
        )
    try:
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0)
                break
            except httpx.HTTPError:
                if process.poll() is not None:
                    raise RuntimeError(f"persister exited; see {log}") from None
                time.sleep(0.005)
        started, cpu_before = time.perf_counter(), procstats.read(process.pid).cpu_seconds
        while spool.streams(spool_dir):
            time.sleep(0.005)
        wall = time.perf_counter() - started
        return wall, procstats.read(process.pid).cpu_seconds - cpu_before
    finally:
        process.terminate()
        process.wait(timeout=30)


def _measure(
    kind: str,
    records: list[Segment | Partial],
    batch_size: int,
    servers: dict[str, str],
    work: Path,
) -> tuple[float, float]:
    spool_dir = work / f"spool-{kind}-{batch_size}"
    asyncio.run(_fill(spool_dir, records))
    wall, cpu = _drain(
        spool_dir,
        batch_size=batch_size,
        segments_url=servers[f"{kind}-{batch_size}"],
        partials_url=servers["redis"],
        log=work / "persister.log",
    )
    rate = len(records) / wall
    return rate, cpu / wall


def _row(batch: int, finals: tuple[float, float], partials: tuple[float, float]) -> list[str]:
    (f_rate, f_cpu), (p_rate, p_cpu) = finals, partials
    return [
        str(batch),
        f"{f_rate:,.0f}",
        f"{f_cpu * 100:.0f} %",
        f"{f_rate / max(f_cpu, 1e-9):,.0f}",
        f"{p_rate:,.0f}",
        f"{p_cpu * 100:.0f} %",
        f"{p_rate / max(p_cpu, 1e-9):,.0f}",
    ]


HEADER = [
    "batch size",
    "finals/s",
    "CPU",
    "finals/s per core",
    "partial updates/s",
    "CPU",
    "partials/s per core",
]


def _table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _report(table: str, args: argparse.Namespace, command: str) -> str:
    machine = (
        f"{platform.node()}, {os.cpu_count()} CPUs (shared), Python {platform.python_version()}"
    )
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""# Persister throughput: one `earshot persister` process

Measured {when} with `{command}` on {machine}.

One persister process drains a spool prepared beforehand ({args.finals:,} finals over 50
sessions; {args.partials:,} partials over 200 sessions, round-robin) into a private MariaDB
(`mariadbd --no-defaults`: InnoDB flushes its log at every commit) and a private Redis
(no persistence), all on the same machine: the persister, MariaDB and Redis share its CPUs.
A batch is one MariaDB transaction (session rows + `INSERT IGNORE` of the segments) and one
Redis pipeline; every batch also replaces the spool's acknowledgement file (write, fsync,
rename). CPU is the persister process's own, as % of one core; "per core" divides the rate by it.

{table}

Targets for later rounds (issue 5): 5,000 finals/s and 20,000 partial updates/s per persister core.
Batch size 1 is bound by two fsyncs per record (MariaDB's commit and the acknowledgement);
larger batches amortise both. The CPUs are shared with other work, so the rates move between runs;
the per-core figures are steadier.
"""


def main() -> None:
    """Run the benchmark and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--finals", type=int, default=5000)
    parser.add_argument("--partials", type=int, default=20000)
    args = parser.parse_args()
    command = "python -m bench.persister_throughput " + " ".join(sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="earshot-bench-") as tmp:
        work = Path(tmp)
        with RedisServer(work / "redis") as redis, MariaDbServer(work / "mariadb") as mariadb:
            servers = {"redis": redis.url}
            for kind in ("finals", "partials"):
                for batch in args.batch_sizes:
                    servers[f"{kind}-{batch}"] = mariadb.create_database(f"{kind}_{batch}")
            rows = []
            for batch in args.batch_sizes:
                finals = _measure("finals", _finals(args.finals, 50), batch, servers, work)
                partials = _measure("partials", _partials(args.partials, 200), batch, servers, work)
                rows.append(_row(batch, finals, partials))
                print(_table(rows[-1:]).splitlines()[-1], flush=True)
    table = _table(rows)
    print(table)
    REPORT.write_text(_report(table, args, command.strip()))
    print(f"report written: {REPORT}")


if __name__ == "__main__":
    main()
