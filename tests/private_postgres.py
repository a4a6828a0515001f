"""A private PostgreSQL server for tests that stop the database, so the shared one keeps serving every other test.

Made with `initdb` and run with `pg_ctl` from the newest /usr/lib/postgresql/*/bin (or `KEYSTILE_TEST_PG_BIN`), on a
free port, without fsync (nothing here has to survive a power cut). PostgreSQL refuses to run as root: as root the
binaries run as the `postgres` OS user, in a directory that user owns.

    server = PostgresServer.create()        # initdb; skips (fails in CI) without the binaries
    server.start(); server.stop(); server.start()
    server.url("keystile")                  # the SQLAlchemy URL of a database on it
    server.remove()                         # stop and delete the data directory
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests import backends
from tests.process import free_port

START_SECONDS = 60
SERVER_USER = "postgres"


def postgres_bin() -> Path | None:
    """The directory of `initdb` and `pg_ctl`: `KEYSTILE_TEST_PG_BIN`, else the newest installed major version."""
    configured = os.environ.get("KEYSTILE_TEST_PG_BIN")
    if configured:
        return Path(configured)
    installed = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda path: int(path.parts[-3]))
    return installed[-1].parent if installed else None


class PostgresServer:
    """One initialized data directory and the server on it, restartable on the same port."""

    def __init__(self, bindir: Path, workdir: Path) -> None:
        self.bindir = bindir
        self.workdir = workdir
        self.datadir = workdir / "data"
        self.port = free_port()
        self.log_path = workdir / "postgres.log"

    @classmethod
    def create(cls) -> PostgresServer:
        bindir = postgres_bin()
        if bindir is None or not (bindir / "initdb").exists():
            where = bindir or "/usr/lib/postgresql/*/bin"
            backends.unavailable("PostgreSQL's initdb", FileNotFoundError(f"no initdb in {where}"))
            raise AssertionError("unreachable")  # unavailable() skips or fails
        # Not pytest's tmp_path: its parents are private to root, and the server may run as another user.
        server = cls(bindir, Path(tempfile.mkdtemp(prefix="keystile-pg-")))
        try:
            server._hand_over(server.workdir)
            server._run("initdb", "-D", str(server.datadir), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        except BaseException:
            server.remove()
            raise
        return server

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def admin_url(self) -> str:
        """The plain (asyncpg) URL of the `postgres` database, for creating others."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        """Start and wait until it accepts connections (`pg_ctl -w`)."""
        options = f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            "pg_ctl", "-D", str(self.datadir), "-l", str(self.log_path), "-o", options, "-w", "-t", str(START_SECONDS),
            "start",
        )  # fmt: skip

    def stop(self) -> None:
        """A fast shutdown: open connections are cut, as in a restart or failover."""
        self._run("pg_ctl", "-D", str(self.datadir), "-m", "fast", "-w", "stop")

    def is_running(self) -> bool:
        status = subprocess.run(self._command("pg_ctl", "-D", str(self.datadir), "status"), capture_output=True)
        return status.returncode == 0

    def remove(self) -> None:
        if self.datadir.exists() and self.is_running():
            self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _run(self, program: str, *args: str) -> None:
        result = subprocess.run(self._command(program, *args), capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{program} failed ({result.returncode}): {result.stdout}{result.stderr}\n{self.log}")

    def _command(self, program: str, *args: str) -> list[str]:
        command = [str(self.bindir / program), *args]
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            return ["runuser", "-u", SERVER_USER, "--", *command]
        return command

    def _hand_over(self, directory: Path) -> None:
        if os.geteuid() == 0:
            user = pwd.getpwnam(SERVER_USER)
            os.chown(directory, user.pw_uid, user.pw_gid)
