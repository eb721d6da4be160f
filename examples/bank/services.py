"""The bank's use cases: plain functions that take a unit of work first.

Each service opens the unit of work it is given with ``with uow:``, so a clean
return commits and any error rolls everything back. Tests pass
``uow.testing.fake(BankUnitOfWork)``; the application passes ``BankUnitOfWork(database)``.

Errors::

    BankError
    ├── AccountNotFound        no account has this id
    ├── InsufficientFunds      the source balance is below the amount
    ├── IdempotencyConflict    the key was already used with other parameters
    └── InvalidRequest         bad input (also a ValueError)
        └── InvalidAmount      not a positive integer, or a transfer to the same account

Money is an integer number of cents. Deposits and transfers carry an idempotency
key: repeating a call with the same key and parameters returns the original
result and changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, TypeVar

import psycopg.errors
from sqlalchemy.exc import IntegrityError

from .models import Account, LedgerEntry
from .repositories import IDEMPOTENCY_KEY_CONSTRAINT, Audit
from .unit_of_work import BankUnitOfWork

__all__ = [
    "MAX_AMOUNT",
    "MAX_KEY_LENGTH",
    "MAX_OWNER_LENGTH",
    "AccountNotFound",
    "AccountSummary",
    "Audit",
    "BankError",
    "IdempotencyConflict",
    "InsufficientFunds",
    "InvalidAmount",
    "InvalidRequest",
    "Statement",
    "StatementLine",
    "Transfer",
    "audit",
    "check_text",
    "deposit",
    "get_account",
    "open_account",
    "statement",
    "total_balance",
    "transfer",
]

T = TypeVar("T")

MAX_AMOUNT = 10**12
"""The largest amount one operation may move, in cents; keeps sums far below BIGINT's limit."""
MAX_KEY_LENGTH = 100
"""The longest idempotency key (``ledger.idempotency_key`` is VARCHAR(100))."""
MAX_OWNER_LENGTH = 200
"""The longest owner name (``accounts.owner`` is VARCHAR(200))."""


# -- errors ---------------------------------------------------------------------------


class BankError(Exception):
    """Base class of the bank's domain errors."""


class AccountNotFound(BankError, LookupError):
    """No account has this id."""

    def __init__(self, account_id: int) -> None:
        """Record the missing id."""
        super().__init__(f"account {account_id} does not exist")
        self.account_id = account_id


class InsufficientFunds(BankError):
    """The source account's balance is below the amount; nothing was changed."""

    def __init__(self, account_id: int, balance: int, amount: int) -> None:
        """Record the account, its balance and the amount asked for."""
        super().__init__(
            f"account {account_id} has {balance} cents, {amount} needed; nothing was transferred"
        )
        self.account_id = account_id
        self.balance = balance
        self.amount = amount


class IdempotencyConflict(BankError):
    """The idempotency key was already used for a different operation."""

    def __init__(self, key: str) -> None:
        """Record the reused key."""
        super().__init__(
            f"idempotency key {key!r} was already used with other parameters; "
            "use a new key for a new operation"
        )
        self.key = key


class InvalidRequest(BankError, ValueError):
    """The request is malformed (an empty owner, a bad idempotency key, ...)."""


class InvalidAmount(InvalidRequest):
    """The amount is not a positive integer of cents, or a transfer names one account twice."""


# -- results --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Transfer:
    """A transfer recorded in the ledger."""

    id: int
    """The ledger entry's id."""
    source_id: int
    target_id: int
    amount: int
    key: str
    replayed: bool = False
    """True when this call repeated an earlier one with the same key and changed nothing."""

    @classmethod
    def of(cls, entry: LedgerEntry, *, replayed: bool = False) -> Transfer:
        """The transfer a ledger entry records."""
        assert entry.source_id is not None  # a transfer always has a source
        return cls(
            id=entry.id,
            source_id=entry.source_id,
            target_id=entry.target_id,
            amount=entry.amount,
            key=entry.idempotency_key,
            replayed=replayed,
        )


@dataclass(frozen=True, slots=True)
class AccountSummary:
    """An account and its balance."""

    id: int
    owner: str
    balance: int


@dataclass(frozen=True, slots=True)
class StatementLine:
    """One ledger entry as seen from one account."""

    entry_id: int
    kind: Literal["deposit", "transfer in", "transfer out"]
    amount: int
    """Signed: positive for money in, negative for money out."""
    counterparty_id: int | None
    """The other account of a transfer; None for a deposit."""
    key: str
    created_at: datetime | None


@dataclass(frozen=True, slots=True)
class Statement:
    """An account's balance and every movement that explains it, oldest first."""

    account_id: int
    owner: str
    balance: int
    lines: tuple[StatementLine, ...]


# -- services -------------------------------------------------------------------------


def open_account(uow: BankUnitOfWork, owner: str, initial: int = 0) -> int:
    """Open an account, with an optional opening deposit; returns its id.

    Raises:
        InvalidRequest: the owner is empty or too long.
        InvalidAmount: ``initial`` is negative or not an integer.
    """
    owner = _checked_owner(owner)
    _check_amount(initial, allow_zero=True)
    with uow:
        account = uow.accounts.create(owner, initial)
        if initial:
            # The opening balance is a deposit like any other, so the ledger explains
            # every cent. No caller can have used this key: the account is new.
            uow.ledger.add(_deposit_entry(account.id, initial, key=f"open:{account.id}"))
    return account.id


def deposit(uow: BankUnitOfWork, account_id: int, amount: int, *, key: str) -> int:
    """Add money to an account; returns the balance right after this deposit.

    A repeated call with the same key and parameters returns the balance the first
    call returned and deposits nothing.

    Raises:
        AccountNotFound, InvalidAmount, InvalidRequest (bad key), IdempotencyConflict.
    """
    _check_amount(amount)
    _check_key(key)
    return _retry_after_duplicate_key(lambda: _deposit(uow, account_id, amount, key))


def _deposit(uow: BankUnitOfWork, account_id: int, amount: int, key: str) -> int:
    with uow:
        account = uow.accounts.get_for_update(account_id)
        if account is None:
            raise AccountNotFound(account_id)
        # Looked up under the account's lock: a concurrent duplicate for this account
        # has committed by now, and READ COMMITTED shows it to this new statement.
        entry = uow.ledger.by_key(key)
        if entry is not None:
            if (entry.source_id, entry.target_id, entry.amount) != (None, account_id, amount):
                raise IdempotencyConflict(key)
            return _balance_after(uow, account, entry)
        account.balance += amount
        uow.ledger.add(_deposit_entry(account_id, amount, key=key))
        return account.balance


def transfer(
    uow: BankUnitOfWork, source_id: int, target_id: int, amount: int, *, key: str
) -> Transfer:
    """Move money between two accounts; returns the recorded transfer.

    Both accounts are locked in ascending id order, so concurrent transfers in
    opposite directions cannot deadlock, and no update is lost. A repeated call with
    the same key and parameters returns the original transfer with
    ``replayed=True`` and moves nothing.

    Raises:
        AccountNotFound, InsufficientFunds, IdempotencyConflict,
        InvalidAmount (also for ``source_id == target_id``), InvalidRequest (bad key).
    """
    _check_amount(amount)
    _check_key(key)
    if source_id == target_id:
        raise InvalidAmount(f"cannot transfer from account {source_id} to itself")
    return _retry_after_duplicate_key(lambda: _transfer(uow, source_id, target_id, amount, key))


def _transfer(
    uow: BankUnitOfWork, source_id: int, target_id: int, amount: int, key: str
) -> Transfer:
    with uow:
        accounts = uow.accounts.lock(source_id, target_id)
        for account_id in (source_id, target_id):
            if account_id not in accounts:
                raise AccountNotFound(account_id)
        entry = uow.ledger.by_key(key)  # under both locks, as in _deposit
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
    return Transfer.of(entry)  # the commit's flush gave the entry its id


def get_account(uow: BankUnitOfWork, account_id: int) -> AccountSummary:
    """Return an account's owner and balance.

    Raises:
        AccountNotFound: no account has this id.
    """
    with uow:
        account = _existing(uow, account_id)
        return AccountSummary(id=account.id, owner=account.owner, balance=account.balance)


def statement(uow: BankUnitOfWork, account_id: int) -> Statement:
    """Return an account's balance and its ledger entries, oldest first.

    The balance and the entries are read by two statements: pass a unit of work
    with ``isolation="REPEATABLE READ"`` (and ``readonly=True``) for them to agree
    while transfers run.

    Raises:
        AccountNotFound: no account has this id.
    """
    with uow:
        account = _existing(uow, account_id)
        return Statement(
            account_id=account.id,
            owner=account.owner,
            balance=account.balance,
            lines=tuple(_line(account_id, entry) for entry in uow.ledger.of_account(account_id)),
        )


def total_balance(uow: BankUnitOfWork) -> int:
    """Return the sum of every account's balance, in cents."""
    with uow:
        return uow.accounts.total_balance()


def audit(uow: BankUnitOfWork) -> Audit:
    """Check the bank's invariants against the ledger, in one SQL statement.

    Every balance must be >= 0 and equal to its deposits plus transfers in minus
    transfers out, and the sum of balances must equal the sum of deposits. Check
    :attr:`Audit.ok`.
    """
    with uow:
        return uow.ledger.audit()


# -- helpers --------------------------------------------------------------------------


def _existing(uow: BankUnitOfWork, account_id: int) -> Account:
    account = uow.accounts.get(account_id)
    if account is None:
        raise AccountNotFound(account_id)
    return account


def _deposit_entry(account_id: int, amount: int, *, key: str) -> LedgerEntry:
    return LedgerEntry(idempotency_key=key, source_id=None, target_id=account_id, amount=amount)


def _balance_after(uow: BankUnitOfWork, account: Account, entry: LedgerEntry) -> int:
    """The account's balance right after ``entry``: today's minus what moved since.

    The caller holds the account's lock, and every entry touching an account is
    written under that lock, so ids order them as they happened. A replay usually
    follows its original closely, so few entries come after it.
    """
    later = uow.ledger.of_account(account.id, after=entry.id)
    return account.balance - sum(
        e.amount if e.target_id == account.id else -e.amount for e in later
    )


def _line(account_id: int, entry: LedgerEntry) -> StatementLine:
    kind: Literal["deposit", "transfer in", "transfer out"]
    if entry.source_id is None:
        kind, amount, other = "deposit", entry.amount, None
    elif entry.target_id == account_id:
        kind, amount, other = "transfer in", entry.amount, entry.source_id
    else:
        kind, amount, other = "transfer out", -entry.amount, entry.target_id
    return StatementLine(
        entry_id=entry.id,
        kind=kind,
        amount=amount,
        counterparty_id=other,
        key=entry.idempotency_key,
        created_at=entry.created_at,
    )


def _retry_after_duplicate_key(
    attempt: Callable[[], T], *, constraint: str = IDEMPOTENCY_KEY_CONSTRAINT
) -> T:
    """Run ``attempt``, and once more if a concurrent call committed the same key first.

    Two calls with one key on different accounts do not wait for each other's row
    locks, so both may miss the other's entry; PostgreSQL's unique constraint stops
    the second at commit, after the first has committed. Its unit of work rolled
    back, so running it again in a fresh transaction finds the entry and replays it
    or reports the conflict. ``constraint`` names the unique constraint (or index)
    whose violation means such a duplicate.
    """
    try:
        return attempt()
    except IntegrityError as exc:
        if not _is_duplicate_key(exc, constraint):
            raise
    return attempt()


def _is_duplicate_key(exc: IntegrityError, constraint: str) -> bool:
    # By SQLSTATE (psycopg's class) and constraint name, never by message text.
    orig = exc.orig
    return (
        isinstance(orig, psycopg.errors.UniqueViolation) and orig.diag.constraint_name == constraint
    )


def _check_amount(amount: int, *, allow_zero: bool = False) -> None:
    # bool is an int subclass; True cents is a bug, not one cent.
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise InvalidAmount(f"amount must be an integer number of cents, not {amount!r}")
    low = 0 if allow_zero else 1
    if not low <= amount <= MAX_AMOUNT:
        raise InvalidAmount(f"amount must be from {low} to {MAX_AMOUNT} cents, not {amount}")


def check_text(value: str) -> str:
    """Return ``value`` if PostgreSQL can store it as ``text``; else raise ``ValueError``."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return value


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not key.strip() or len(key) > MAX_KEY_LENGTH:
        raise InvalidRequest(
            f"the idempotency key must be a non-blank string of at most {MAX_KEY_LENGTH} characters"
        )
    try:
        check_text(key)
    except ValueError as exc:
        raise InvalidRequest(f"the idempotency key {exc}") from None


def _checked_owner(owner: str) -> str:
    if not isinstance(owner, str) or not owner.strip() or len(owner.strip()) > MAX_OWNER_LENGTH:
        raise InvalidRequest(
            f"the owner must be a non-blank name of at most {MAX_OWNER_LENGTH} characters"
        )
    try:
        return check_text(owner.strip())
    except ValueError as exc:
        raise InvalidRequest(f"the owner {exc}") from None
