"""A throw-away PostgreSQL cluster for tests and benchmarks: initdb into a temp folder, pg_ctl on a free loopback
port, removed afterwards. Uses the server binaries of the machine (Debian's postgresql package); a missing server
is an error, never a skip (.ci/run installs the package when it is absent)."""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg

from tests.support.services import free_port

# initdb refuses to run as root: as root, the cluster belongs to this user.
CLUSTER_USER = "postgres"


def server_bin_dir() -> Path:
    """The newest installed server's bin folder (SDAPI_PG_BIN overrides)."""
    if configured := os.environ.get("SDAPI_PG_BIN"):
        return Path(configured)
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda path: int(path.split("/")[4]))
    if not candidates:
        found = shutil.which("initdb")
        if found is None:
            raise RuntimeError(
                "PostgreSQL server binaries not found (no /usr/lib/postgresql/*/bin/initdb, no initdb on PATH): "
                "apt-get install postgresql, or set SDAPI_PG_BIN"
            )
        return Path(found).parent
    return Path(candidates[-1]).parent


class PostgresCluster:
    """One cluster on 127.0.0.1:`port`, trust authentication, tuned for tests (no fsync: it is thrown away)."""

    def __init__(self) -> None:
        self.bin = server_bin_dir()
        self.directory = Path(tempfile.mkdtemp(prefix="sdapi-pg-"))
        self.data = self.directory / "data"
        self.port = free_port()
        self._names = itertools.count()
        self._as_root = os.geteuid() == 0

    def _run(self, *command: str) -> None:
        """Run a server tool (as the cluster's user when root); a failure raises with the tool's own words."""
        prefix = ["runuser", "-u", CLUSTER_USER, "--"] if self._as_root else []
        result = subprocess.run([*prefix, *command], capture_output=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(
                f"{Path(command[0]).name} failed ({result.returncode}): "
                f"{result.stderr.decode(errors='replace').strip() or result.stdout.decode(errors='replace').strip()}"
            )

    def start(self) -> PostgresCluster:
        if self._as_root:
            shutil.chown(self.directory, CLUSTER_USER)
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "--auth=trust", "-U", "postgres", "--no-sync", "-E", "UTF8"
        )
        self._pg_ctl("start")
        return self

    def _pg_ctl(self, action: str) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.directory} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        log = str(self.directory / "server.log")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", log, "-w", "-m", "fast", "-o", options, action)

    def stop_server(self) -> None:
        """Stop the server (fast shutdown: open connections are cut), keeping the data."""
        self._pg_ctl("stop")

    def start_server(self) -> None:
        self._pg_ctl("start")

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; returns its DSN."""
        name = f"sdapi_test_{next(self._names)}"
        with psycopg.connect(self.dsn(), autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return self.dsn(name)

    def destroy(self) -> None:
        with contextlib.suppress(RuntimeError):  # already stopped
            self._pg_ctl("stop")
        shutil.rmtree(self.directory, ignore_errors=True)
