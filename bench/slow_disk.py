"""A private PostgreSQL cluster on a slower disk: every fsync/fdatasync its processes make waits a fixed time.

This machine's disk flushes in about 0.1 ms (`pg_test_fsync`: fdatasync 97 us); network volumes and spinning
disks take 1 to 10 ms. To compare receivers on such a disk, `slow_flush_cluster(delay_us)` builds a small
shared library that makes `fsync` and `fdatasync` sleep `delay_us` before doing the real call, creates a
throwaway cluster (`initdb` from `pg_config --bindir`, as the `postgres` user when run as root), starts it
with the library preloaded (`LD_PRELOAD`) on a free port, and removes it afterwards. The sleep costs no CPU,
so a CPU-bound comparison stays fair; commits that arrive while a flush waits are written by the next one,
as on a real slow disk. (PostgreSQL's `commit_delay`, used before, is not such a stand-in: it makes
PostgreSQL itself gather concurrent commits into one flush, which helps a receiver that commits per event.)

Needs a C compiler (`cc`) and PostgreSQL's server binaries; Linux only.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg

from measure import free_port

SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>

static void slow_down(void) {
    const char *setting = getenv("FLEXSYNC_BENCH_FLUSH_DELAY_US");
    long us = setting ? atol(setting) : 0;
    if (us > 0) {
        struct timespec pause = {us / 1000000, (us % 1000000) * 1000};
        nanosleep(&pause, NULL);
    }
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    slow_down();
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    slow_down();
    return real(fd);
}
"""


def _as_postgres(command: list[str]) -> list[str]:
    """initdb and the server refuse to run as root: run them as the `postgres` user then."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


async def _commit_ms(dsn: str, commits: int = 40) -> float:
    """The median time of a one-row autocommit insert: what one flush costs, seen from a client."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS flush_probe_durable (n int)")
        times = []
        for _ in range(commits):
            started = time.perf_counter()
            await conn.execute("INSERT INTO flush_probe_durable VALUES (1)")
            times.append(time.perf_counter() - started)
        await conn.execute("DROP TABLE flush_probe_durable")
        return statistics.median(times) * 1000
    finally:
        await conn.close()


@contextmanager
def slow_flush_cluster(delay_us: int) -> Iterator[tuple[str, float]]:
    """Yields the new cluster's admin DSN and the median commit time measured on it (ms)."""
    bindir = Path(subprocess.run(["pg_config", "--bindir"], check=True, capture_output=True, text=True).stdout.strip())
    home = Path(tempfile.mkdtemp(prefix="flexsync-slow-disk-"))
    data, port = home / "data", free_port()
    try:
        (home / "slow_flush.c").write_text(SHIM)
        subprocess.run(
            ["cc", "-shared", "-fPIC", "-O2", "-o", str(home / "slow_flush.so"), str(home / "slow_flush.c"), "-ldl"],
            check=True,
        )
        if os.geteuid() == 0:
            shutil.chown(home, "postgres")
        subprocess.run(
            _as_postgres([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"]),
            check=True,
            capture_output=True,
        )
        with (data / "postgresql.conf").open("a") as conf:
            conf.write(f"port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{home}'\n")
        env = dict(os.environ, LD_PRELOAD=str(home / "slow_flush.so"), FLEXSYNC_BENCH_FLUSH_DELAY_US=str(delay_us))
        start = [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(home / "server.log"), "-w", "start"]
        subprocess.run(_as_postgres(start), check=True, capture_output=True, env=env)
        try:
            dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
            yield dsn, asyncio.run(_commit_ms(dsn))
        finally:
            stop = [str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]
            subprocess.run(_as_postgres(stop), check=False, capture_output=True)
    finally:
        shutil.rmtree(home, ignore_errors=True)
