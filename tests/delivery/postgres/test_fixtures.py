"""The PostgreSQL test fixtures: a missing server skips outside CI and fails under CI."""

from __future__ import annotations

import pytest

import tests.fakes.pgcluster as pgcluster
import tests.postgres as plugin


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
