"""The PostgreSQL test fixtures: a missing server skips outside CI and fails under CI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil
import pytest

import tests.fakes.pgcluster as pgcluster
import tests.postgres as plugin

ROOT = Path(__file__).resolve().parents[3]


def test_missing_postgres_names_the_install_script(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(pgcluster, "DEBIAN_INITDB", "/nonexistent/*/bin/initdb")
    with pytest.raises(pgcluster.PostgresMissing, match=r"scripts/install-postgres\.sh"):
        pgcluster.find_bindir()


def test_missing_postgres_is_a_skip_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="install-postgres"):
        plugin._unavailable("initdb was not found: run scripts/install-postgres.sh")


def test_missing_postgres_is_a_failure_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        plugin._unavailable("initdb was not found: run scripts/install-postgres.sh")


def test_each_test_gets_a_database_of_its_own(postgres_dsn: str) -> None:
    assert postgres_dsn.rsplit("/", 1)[1].startswith("capigw_test_")


def test_a_cluster_whose_maker_was_killed_is_reaped_by_the_next_run() -> None:
    maker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from tests.fakes.pgcluster import throwaway_cluster\n"
            "with throwaway_cluster() as c:\n"
            "    print(c.root, flush=True)\n"
            "    time.sleep(60)\n",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert maker.stdout is not None
        root = Path(maker.stdout.readline().strip())
        postmaster = int((root / "data" / "postmaster.pid").read_text().split()[0])
        # Another run's live cluster is never touched.
        assert root not in pgcluster.reap_orphans(root.parent)
    finally:
        maker.kill()  # like a timeout's SIGKILL: no teardown runs
        maker.wait()
        if maker.stdout is not None:
            maker.stdout.close()
    assert psutil.pid_exists(postmaster)
    assert root in pgcluster.reap_orphans(root.parent)
    assert not root.exists()
    assert not psutil.pid_exists(postmaster) or psutil.Process(postmaster).status() == "zombie"
