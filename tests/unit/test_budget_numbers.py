"""The budget's arithmetic and the application names that carry the process id."""

from __future__ import annotations

import pytest

from uow import ConfigurationError
from uow._engine.budget import Budget, is_marked, process_name


def _budget(configured: int, connected: int) -> Budget:
    return Budget(
        max_connections=50,
        reserved=3,
        used_by_others=0,
        processes=max(configured, connected),
        per_process=5,
        configured=configured,
        connected=connected,
    )


def test_workers_seen_connected_raise_the_count_and_the_message_says_so() -> None:
    """1 configured, 10 connected: 50 needed against 47, and the fix names the count."""
    with pytest.raises(ConfigurationError) as info:
        _budget(configured=1, connected=10).check()
    message = str(info.value)
    assert "10 processes (the settings say 1, but 10 processes of this application" in message
    assert "= 50 connections" in message
    assert "- 3 reserved - 0 used by other applications = 47" in message
    assert "UOW_PROCESSES or WEB_CONCURRENCY" in message


def test_nine_workers_of_five_fit_in_47_slots() -> None:
    """45 connections fit in 47: the check passes."""
    _budget(configured=1, connected=9).check()


def test_only_uows_own_names_carry_the_pid() -> None:
    """uow and uow:<x> are marked; names the user chose are not."""
    assert is_marked("uow")
    assert is_marked("uow:bank")
    assert not is_marked("billing")
    assert not is_marked("uow-test")


def test_marked_name_fits_postgres_limit_and_cuts_every_process_alike() -> None:
    """A 63-character name is cut before the pid, at the same place for every pid."""
    name = "uow:" + "x" * 59
    short, long = process_name(name, 7), process_name(name, 4_194_304)
    assert len(long) <= 63
    assert short.split("[")[0] == long.split("[")[0]
    assert process_name("uow:bank", 4242) == "uow:bank[4242]"
