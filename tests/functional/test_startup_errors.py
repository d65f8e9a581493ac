"""A start that cannot succeed says why in one line, with the fix, and exits 2 (issue 11, item 12):
real `edgeproxy` processes against a database that is not there, a taken port, a missing extra.
A missing package is simulated in the child process (its import blocked), not uninstalled."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.nodes import free_port, wait_until

EXE = [sys.executable, "-m", "edgeproxy"]


def without(module: str) -> list[str]:
    """`python -m edgeproxy` with `import <module>` failing as if the package were not installed."""
    return [sys.executable, "-c",
            f"import runpy, sys; sys.modules[{module!r}] = None; sys.argv[0] = 'edgeproxy'; "
            "runpy.run_module('edgeproxy', run_name='__main__', alter_sys=True)"]


def refused(argv: list[str], cwd: Path) -> str:
    """Run a command that must be refused; its stderr must be that one line. Returns it."""
    # (cwd: the test's directory, where a gateway writes by default, e.g. its ledger journal)
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=cwd)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("edgeproxy: ") and "; fix: " in lines[0], lines[0]
    return lines[0]


def config(tmp_path: Path, ledger: str, state: str = "memory://", listen: str = "127.0.0.1:0",
           name: str = "c.toml") -> str:
    path = tmp_path / name
    path.write_text(f'[server]\nlisten = "{listen}"\n'
                    f'[storage]\nledger = "{ledger}"\nstate = "{state}"\n')
    return str(path)


def closed_port() -> int:
    return free_port()  # bound and released: nothing listens there


def test_unreachable_postgresql(tmp_path) -> None:
    port = closed_port()
    cfg = config(tmp_path, f"postgresql://postgres:s3cret@127.0.0.1:{port}/ledgerdb")
    line = refused([*EXE, "serve", "--config", cfg], tmp_path)
    assert f"cannot connect to the PostgreSQL ledger at 127.0.0.1:{port}/ledgerdb" in line
    assert "start PostgreSQL" in line and "[storage] ledger" in line
    assert "s3cret" not in line


def test_postgresql_without_the_database(tmp_path, pg_url) -> None:
    cfg = config(tmp_path, pg_url + "_gone")
    line = refused([*EXE, "serve", "--config", cfg], tmp_path)
    assert "no such database" in line and "CREATE DATABASE" in line


def test_unwritable_sqlite_path(tmp_path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    where = tmp_path / "a-file" / "ledger.db"
    cfg = config(tmp_path, f"sqlite:///{where}")
    line = refused([*EXE, "serve", "--config", cfg], tmp_path)
    assert f"cannot use the SQLite ledger {where}" in line
    assert f"make {where.parent} exist and writable" in line


def test_port_in_use(tmp_path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = config(tmp_path, f"sqlite:///{tmp_path}/l.db")
        line = refused([*EXE, "serve", "--config", cfg, "--port", str(port)], tmp_path)
        assert f"cannot listen on 127.0.0.1:{port} (Address already in use)" in line
        assert "choose another port" in line
        demo = refused([*EXE, "demo", "--port", str(port)], tmp_path)
        assert f"cannot listen on 127.0.0.1:{port}" in demo


def test_address_not_on_this_host(tmp_path) -> None:
    cfg = config(tmp_path, "sqlite://:memory:")
    # 203.0.113.0/24 is TEST-NET-3: documentation only, on no machine
    line = refused([*EXE, "serve", "--config", cfg, "--host", "203.0.113.7"], tmp_path)
    assert "cannot listen on 203.0.113.7:0" in line and "an address of this machine" in line


def test_redis_state_without_the_redis_extra(tmp_path) -> None:
    cfg = config(tmp_path, "sqlite://:memory:", state="redis://:pw@127.0.0.1:6379/0")
    line = refused([*without("redis"), "serve", "--config", cfg], tmp_path)
    assert "needs the redis package" in line and "pip install 'edgeproxy[redis]'" in line
    assert "pw@" not in line


@pytest.mark.parametrize("argv", [["serve"], ["keys", "list"], ["credits", "add", "acct_x", "5"]])
def test_postgresql_ledger_without_asyncpg(tmp_path, argv: list[str]) -> None:
    cfg = config(tmp_path, f"postgresql://postgres@127.0.0.1:{closed_port()}/test")
    line = refused([*without("asyncpg"), *argv, "--config", cfg], tmp_path)
    assert "needs asyncpg, which is not installed" in line
    assert "pip install 'edgeproxy[postgres]'" in line


@pytest.mark.parametrize("argv", [["keys", "list"], ["keys", "create", "--name", "a"],
                                  ["credits", "add", "acct_x", "5"]])
def test_ledger_commands_refuse_like_serve(tmp_path, argv: list[str]) -> None:
    cfg = config(tmp_path, f"postgresql://postgres@127.0.0.1:{closed_port()}/test")
    line = refused([*EXE, *argv, "--config", cfg], tmp_path)
    assert "cannot connect to the PostgreSQL ledger" in line
    (tmp_path / "f").write_text("")
    cfg = config(tmp_path, f"sqlite:///{tmp_path}/f/l.db")
    line = refused([*EXE, *argv, "--config", cfg], tmp_path)
    assert "cannot use the SQLite ledger" in line


@pytest.mark.parametrize(("storage", "expected"), [
    ('ledger = "postgresql://h:port/db"', "storage.ledger: Port could not be cast"),
    ('state = "redis://h:x:y/0"', "storage.state: Port could not be cast"),
])
def test_a_bad_storage_url_is_a_configuration_error(tmp_path, storage: str, expected: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(f"[storage]\n{storage}\n")
    p = subprocess.run([*EXE, "serve", "--config", str(path)], capture_output=True, text=True,
                       timeout=30, cwd=tmp_path)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"edgeproxy: configuration refused: {expected}")


def test_a_port_out_of_range_is_refused_not_wrapped(tmp_path) -> None:
    p = subprocess.run([*EXE, "serve", "--port", "99999"], capture_output=True, text=True,
                       timeout=30, cwd=tmp_path)
    assert p.returncode == 2 and "not a port (0-65535): '99999'" in p.stderr


def test_workers_all_refused_exit_2_with_the_one_line(tmp_path, redis_server) -> None:
    port = closed_port()
    cfg = config(tmp_path, f"postgresql://postgres@127.0.0.1:{port}/test", redis_server[0])
    p = subprocess.run([*EXE, "serve", "--config", cfg, "--workers", "3"], capture_output=True,
                       text=True, timeout=60, cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    mine = [line for line in p.stderr.splitlines() if line.startswith("edgeproxy: ")]
    assert mine == [p.stderr.splitlines()[-1]]  # said once, not once per worker, and last
    assert f"cannot connect to the PostgreSQL ledger at 127.0.0.1:{port}/test" in mine[0]
    assert "restarts in" not in p.stderr  # not looping


def test_a_worker_refused_at_restart_backs_off_then_recovers(tmp_path, redis_server) -> None:
    port = free_port()
    ledger_dir = tmp_path / "ledger"
    ledger_dir.mkdir()
    cfg = config(tmp_path, f"sqlite:///{ledger_dir}/w.db", redis_server[0],
                 listen=f"127.0.0.1:{port}")
    log = tmp_path / "supervisor.log"
    with log.open("wb") as out:
        sup = subprocess.Popen([*EXE, "serve", "--config", cfg, "--workers", "2"],
                               stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        wait_until(lambda: log.read_text().count(" listening on ") == 2, 30,
                   what="both workers to listen")
        children = subprocess.run(["pgrep", "-P", str(sup.pid)], capture_output=True,
                                  text=True).stdout.split()
        assert len(children) == 2
        shutil.rmtree(ledger_dir)  # from now on a new worker cannot open its ledger
        os.kill(int(children[0]), signal.SIGKILL)
        # each refused restart waits twice as long as the one before
        wait_until(lambda: "restarts in 2.0 s (refused: " in log.read_text(), 30,
                   what="a third restart")
        text = log.read_text()
        index = re.search(r"worker (\d) restarts in 0\.5 s \(exited with -9\)", text)
        assert index is not None, text
        mine = re.findall(rf"worker {index[1]} restarts in (\S+) s \((\w+)", text)
        assert mine[:3] == [("0.5", "exited"), ("1.0", "refused"), ("2.0", "refused")], text
        assert "cannot use the SQLite ledger" in text and "Traceback" not in text
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200  # the other one
        ledger_dir.mkdir()  # the cause is gone: the next restart comes up
        wait_until(lambda: log.read_text().count(" listening on ") == 3, 30,
                   what="the worker to listen again")
        assert f"worker {index[1]} restarts in 4.0 s" not in log.read_text()
    finally:
        sup.send_signal(signal.SIGTERM)
        code = sup.wait(timeout=60)
    assert code == 0, log.read_text()
