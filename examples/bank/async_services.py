"""The bank's hot paths for asyncio: the same rules as services.py, on AsyncUnitOfWork.

Async code cannot call the sync services (they would block the event loop), so the
two operations an async front end needs most are written again here with the same
domain errors, validation and locking order. Everything else stays in services.py.
"""

from __future__ import annotations

from uow import AsyncRepository, AsyncUnitOfWork

from .models import Account, LedgerEntry
from .services import (
    AccountNotFound,
    AccountSummary,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidAmount,
    Transfer,
    _check_amount,
    _check_key,
)

__all__ = ["AsyncBankUnitOfWork", "get_account", "transfer"]


class AsyncBankUnitOfWork(AsyncUnitOfWork):
    """:class:`uow.AsyncUnitOfWork` with the bank's repositories, ready inside ``async with``."""

    accounts: AsyncRepository[Account]
    ledger: AsyncRepository[LedgerEntry]


async def transfer(
    uow: AsyncBankUnitOfWork, source_id: int, target_id: int, amount: int, *, key: str
) -> Transfer:
    """Move money between two accounts, as :func:`services.transfer` does."""
    _check_amount(amount)
    _check_key(key)
    if source_id == target_id:
        raise InvalidAmount(f"cannot transfer from account {source_id} to itself")
    async with uow:
        # Both rows locked in ascending id order: no deadlock, no lost update.
        locked = await uow.accounts.list(
            Account.id.in_([source_id, target_id]), order_by=Account.id, for_update=True
        )
        accounts = {account.id: account for account in locked}
        for account_id in (source_id, target_id):
            if account_id not in accounts:
                raise AccountNotFound(account_id)
        entry = await uow.ledger.get_by(idempotency_key=key)
        if entry is not None:
            if (entry.source_id, entry.target_id, entry.amount) != (source_id, target_id, amount):
                raise IdempotencyConflict(key)
            return Transfer.of(entry, replayed=True)
        source, target = accounts[source_id], accounts[target_id]
        if source.balance < amount:
            raise InsufficientFunds(source_id, source.balance, amount)
        source.balance -= amount
        target.balance += amount
        entry = uow.ledger.add(
            LedgerEntry(
                idempotency_key=key, source_id=source_id, target_id=target_id, amount=amount
            )
        )
    return Transfer.of(entry)


async def get_account(uow: AsyncBankUnitOfWork, account_id: int) -> AccountSummary:
    """An account's owner and balance, as :func:`services.get_account` returns them."""
    async with uow:
        account = await uow.accounts.get(account_id)
        if account is None:
            raise AccountNotFound(account_id)
        return AccountSummary(id=account.id, owner=account.owner, balance=account.balance)
