"""The bank's unit of work: one transaction with its repositories."""

from __future__ import annotations

from uow import UnitOfWork

from .repositories import AccountRepository, LedgerRepository, StatementRepository

__all__ = ["BankUnitOfWork"]


class BankUnitOfWork(UnitOfWork):
    """A :class:`uow.UnitOfWork` with the bank's repositories, ready inside ``with``.

    Services take one as their first argument, so tests can pass
    ``uow.testing.fake(BankUnitOfWork)`` instead. The services expect the default
    READ COMMITTED isolation for writes: they lock the rows they change.
    """

    accounts: AccountRepository
    ledger: LedgerRepository
    statements: StatementRepository
