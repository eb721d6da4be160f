"""The bank's services on the in-memory fake of BankUnitOfWork: no database involved."""

from __future__ import annotations

import dataclasses

import pytest

from examples.bank import services
from examples.bank.models import LedgerEntry
from examples.bank.services import (
    AccountNotFound,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidAmount,
    InvalidRequest,
)
from examples.bank.unit_of_work import BankUnitOfWork
from uow.testing import fake


@pytest.fixture
def bank() -> BankUnitOfWork:
    """A fake BankUnitOfWork on an empty in-memory store."""
    return fake(BankUnitOfWork)


def balance(bank: BankUnitOfWork, account_id: int) -> int:
    return services.get_account(bank, account_id).balance


def ledger(bank: BankUnitOfWork) -> list[LedgerEntry]:
    with bank:
        return bank.ledger.list(order_by=LedgerEntry.id)


def test_open_account_records_the_opening_deposit(bank: BankUnitOfWork) -> None:
    """open_account returns new ids; an opening balance is a ledger deposit, zero writes none."""
    ann = services.open_account(bank, "ann", 1_000)
    bob = services.open_account(bank, "  bob  ")

    assert ann != bob
    assert services.get_account(bank, ann) == services.AccountSummary(ann, "ann", 1_000)
    assert services.get_account(bank, bob) == services.AccountSummary(bob, "bob", 0)
    assert [(e.source_id, e.target_id, e.amount) for e in ledger(bank)] == [(None, ann, 1_000)]


def test_deposit_returns_the_new_balance(bank: BankUnitOfWork) -> None:
    """A deposit adds to the balance, returns it, and writes one ledger entry with its key."""
    ann = services.open_account(bank, "ann", 100)

    assert services.deposit(bank, ann, 50, key="d-1") == 150
    assert services.deposit(bank, ann, 25, key="d-2") == 175
    assert balance(bank, ann) == 175
    assert [e.idempotency_key for e in ledger(bank)] == [f"open:{ann}", "d-1", "d-2"]


def test_transfer_moves_money_and_shows_on_both_statements(bank: BankUnitOfWork) -> None:
    """A transfer debits one account, credits the other, and appears on both statements."""
    ann = services.open_account(bank, "ann", 1_000)
    bob = services.open_account(bank, "bob", 10)

    result = services.transfer(bank, ann, bob, 400, key="t-1")

    assert result == services.Transfer(result.id, ann, bob, 400, "t-1", replayed=False)
    assert (balance(bank, ann), balance(bank, bob)) == (600, 410)
    ann_page = services.statement(bank, ann)
    assert ann_page.balance == 600
    assert [(x.kind, x.amount, x.counterparty_id) for x in ann_page.lines] == [
        ("deposit", 1_000, None),
        ("transfer out", -400, bob),
    ]
    bob_lines = services.statement(bank, bob).lines
    assert [(x.kind, x.amount, x.counterparty_id) for x in bob_lines] == [
        ("deposit", 10, None),
        ("transfer in", 400, ann),
    ]
    assert bob_lines[-1].entry_id == result.id


def test_insufficient_funds_changes_nothing(bank: BankUnitOfWork) -> None:
    """A transfer above the balance raises and leaves both balances and the ledger unchanged."""
    ann = services.open_account(bank, "ann", 100)
    bob = services.open_account(bank, "bob", 5)
    before = ledger(bank)

    with pytest.raises(InsufficientFunds) as caught:
        services.transfer(bank, ann, bob, 101, key="too-much")

    assert (caught.value.account_id, caught.value.balance, caught.value.amount) == (ann, 100, 101)
    assert (balance(bank, ann), balance(bank, bob)) == (100, 5)
    assert ledger(bank) == before


@pytest.mark.parametrize("amount", [0, -1, 2.5, True, "10", services.MAX_AMOUNT + 1])
def test_bad_amounts_are_rejected(bank: BankUnitOfWork, amount: object) -> None:
    """Zero, negative, fractional, boolean, textual and huge amounts raise InvalidAmount."""
    ann = services.open_account(bank, "ann", 100)
    bob = services.open_account(bank, "bob")

    with pytest.raises(InvalidAmount):
        services.deposit(bank, ann, amount, key="d")  # type: ignore[arg-type]
    with pytest.raises(InvalidAmount):
        services.transfer(bank, ann, bob, amount, key="t")  # type: ignore[arg-type]
    assert (balance(bank, ann), balance(bank, bob), len(ledger(bank))) == (100, 0, 1)


def test_transfer_to_the_same_account_is_rejected(bank: BankUnitOfWork) -> None:
    """A transfer from an account to itself raises InvalidAmount."""
    ann = services.open_account(bank, "ann", 100)

    with pytest.raises(InvalidAmount, match="itself"):
        services.transfer(bank, ann, ann, 10, key="self")
    assert balance(bank, ann) == 100


@pytest.mark.parametrize("owner", ["", "   ", "x" * 201, "a\x00b", "a\ud800b"])
def test_bad_owner_is_rejected(bank: BankUnitOfWork, owner: str) -> None:
    """An empty, blank, over-long owner, or one PostgreSQL cannot store, raises InvalidRequest."""
    with pytest.raises(InvalidRequest):
        services.open_account(bank, owner)


def test_negative_opening_balance_is_rejected(bank: BankUnitOfWork) -> None:
    """open_account with a negative initial amount raises InvalidAmount and opens nothing."""
    with pytest.raises(InvalidAmount):
        services.open_account(bank, "ann", -1)
    with bank:
        assert bank.accounts.count() == 0


@pytest.mark.parametrize("key", ["", "  ", "k" * 101, "k\x00", "\udfff"])
def test_bad_key_is_rejected(bank: BankUnitOfWork, key: str) -> None:
    """An empty, blank, over-long idempotency key, or one with NUL or a lone surrogate: invalid."""
    ann = services.open_account(bank, "ann", 100)

    with pytest.raises(InvalidRequest):
        services.deposit(bank, ann, 1, key=key)


def test_repeated_deposit_returns_the_original_balance_once(bank: BankUnitOfWork) -> None:
    """A deposit repeated with its key returns the balance of the first call and adds nothing."""
    ann = services.open_account(bank, "ann", 100)
    bob = services.open_account(bank, "bob", 100)
    first = services.deposit(bank, ann, 50, key="d")
    services.transfer(bank, ann, bob, 30, key="later-out")
    services.deposit(bank, ann, 5, key="later-in")

    assert services.deposit(bank, ann, 50, key="d") == first == 150
    assert balance(bank, ann) == 125
    assert len(ledger(bank)) == 5


def test_repeated_transfer_replays_once(bank: BankUnitOfWork) -> None:
    """A transfer repeated with its key returns the original (replayed=True) and moves nothing."""
    ann = services.open_account(bank, "ann", 1_000)
    bob = services.open_account(bank, "bob")
    first = services.transfer(bank, ann, bob, 300, key="t")

    again = services.transfer(bank, ann, bob, 300, key="t")

    assert again.replayed
    assert dataclasses.replace(again, replayed=False) == first
    assert (balance(bank, ann), balance(bank, bob)) == (700, 300)
    assert len(ledger(bank)) == 2


def test_replay_is_checked_before_funds(bank: BankUnitOfWork) -> None:
    """A replayed transfer succeeds even if the source could no longer afford it."""
    ann = services.open_account(bank, "ann", 300)
    bob = services.open_account(bank, "bob")
    first = services.transfer(bank, ann, bob, 300, key="all")

    assert services.transfer(bank, ann, bob, 300, key="all").id == first.id
    assert balance(bank, ann) == 0


@pytest.mark.parametrize(
    ("source", "target", "amount"),
    [("bob", "ann", 100), ("ann", "bob", 101), ("ann", "cat", 100)],
)
def test_reused_key_with_other_parameters_conflicts(
    bank: BankUnitOfWork, source: str, target: str, amount: int
) -> None:
    """A key reused with another direction, amount or account raises IdempotencyConflict."""
    ids = {name: services.open_account(bank, name, 1_000) for name in ("ann", "bob", "cat")}
    services.transfer(bank, ids["ann"], ids["bob"], 100, key="t")
    before = ledger(bank)

    with pytest.raises(IdempotencyConflict) as caught:
        services.transfer(bank, ids[source], ids[target], amount, key="t")

    assert caught.value.key == "t"
    assert ledger(bank) == before
    assert [balance(bank, i) for i in ids.values()] == [900, 1_100, 1_000]


def test_key_reused_across_deposit_and_transfer_conflicts(bank: BankUnitOfWork) -> None:
    """A deposit's key cannot be reused for a transfer, nor for a deposit elsewhere."""
    ann = services.open_account(bank, "ann", 100)
    bob = services.open_account(bank, "bob")
    services.deposit(bank, ann, 10, key="k")

    with pytest.raises(IdempotencyConflict):
        services.transfer(bank, ann, bob, 10, key="k")
    with pytest.raises(IdempotencyConflict):
        services.deposit(bank, bob, 10, key="k")
    with pytest.raises(IdempotencyConflict):
        services.deposit(bank, ann, 11, key="k")
    assert (balance(bank, ann), balance(bank, bob)) == (110, 0)


def test_unknown_accounts_raise_account_not_found(bank: BankUnitOfWork) -> None:
    """Every service given an id that does not exist raises AccountNotFound and writes nothing."""
    ann = services.open_account(bank, "ann", 100)

    with pytest.raises(AccountNotFound) as caught:
        services.deposit(bank, 42, 10, key="d")
    assert caught.value.account_id == 42
    with pytest.raises(AccountNotFound):
        services.transfer(bank, ann, 42, 10, key="t1")
    with pytest.raises(AccountNotFound):
        services.transfer(bank, 42, ann, 10, key="t2")
    with pytest.raises(AccountNotFound):
        services.statement(bank, 42)
    with pytest.raises(AccountNotFound):
        services.get_account(bank, 42)
    assert balance(bank, ann) == 100
    assert len(ledger(bank)) == 1
