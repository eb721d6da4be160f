"""The bank as FastAPI's SQL (relational) databases tutorial would write it.

The comparison point of ``benchmarks/web.py``: plain SQLAlchemy with
``create_engine(DATABASE_URL)`` and its defaults (a QueuePool of 5 + 10 overflow per
process, 30 s pool timeout, no pre-ping), ``SessionLocal = sessionmaker(...)``, a
``get_db`` dependency that yields a session and closes it in ``finally``, sync
endpoints that commit explicitly. Same tables as the example (the bank's migrations),
same routes and JSON for what the load generator sends:

    POST /transfers                   {"source_id", "target_id", "amount", "key"} -> 201
    GET  /accounts/{id}                                                            -> 200
    POST /accounts/{id}/deposits      {"amount", "key"}                           -> 200

Run: ``DATABASE_URL=... uvicorn benchmarks.tutorial_app:app --workers N``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session, sessionmaker

from examples.bank.models import Account, LedgerEntry

# The tutorial's module-level engine, with create_engine's defaults.
engine = create_engine(os.environ["DATABASE_URL"])
SessionLocal = sessionmaker(autocommit=False, autoflush=False, bind=engine)

app = FastAPI()


def get_db() -> Iterator[Session]:
    """One session per request, closed after the response (the tutorial's dependency)."""
    db = SessionLocal()
    try:
        yield db
    finally:
        db.close()


Db = Annotated[Session, Depends(get_db)]


class TransferIn(BaseModel):
    """``POST /transfers``."""

    source_id: int
    target_id: int
    amount: int
    key: str


class DepositIn(BaseModel):
    """``POST /accounts/{id}/deposits``."""

    amount: int
    key: str


@app.post("/transfers", status_code=201)
def transfer(body: TransferIn, db: Db) -> dict[str, object]:
    """Lock both accounts in id order, move the money, record it, commit."""
    if body.source_id == body.target_id or body.amount <= 0:
        raise HTTPException(status_code=422, detail="invalid transfer")
    ids = sorted((body.source_id, body.target_id))
    found = db.scalars(
        select(Account).where(Account.id.in_(ids)).order_by(Account.id).with_for_update()
    )
    accounts = {account.id: account for account in found}
    if len(accounts) != 2:
        db.rollback()
        raise HTTPException(status_code=404, detail="account not found")
    source, target = accounts[body.source_id], accounts[body.target_id]
    if source.balance < body.amount:
        db.rollback()
        raise HTTPException(status_code=409, detail="insufficient funds")
    source.balance -= body.amount
    target.balance += body.amount
    entry = LedgerEntry(
        idempotency_key=body.key,
        source_id=body.source_id,
        target_id=body.target_id,
        amount=body.amount,
    )
    db.add(entry)
    db.commit()
    return {
        "id": entry.id,
        "source_id": body.source_id,
        "target_id": body.target_id,
        "amount": body.amount,
        "key": body.key,
        "replayed": False,
    }


@app.get("/accounts/{account_id}")
def get_account(account_id: int, db: Db) -> dict[str, object]:
    """An account's owner and balance."""
    account = db.get(Account, account_id)
    if account is None:
        raise HTTPException(status_code=404, detail="account not found")
    return {"id": account.id, "owner": account.owner, "balance": account.balance}


@app.post("/accounts/{account_id}/deposits")
def deposit(account_id: int, body: DepositIn, db: Db) -> dict[str, object]:
    """Lock the account, add the amount, record it, commit."""
    account = db.get(Account, account_id, with_for_update=True)
    if account is None:
        raise HTTPException(status_code=404, detail="account not found")
    account.balance += body.amount
    db.add(LedgerEntry(idempotency_key=body.key, target_id=account_id, amount=body.amount))
    db.commit()
    return {"account_id": account_id, "balance": account.balance, "key": body.key}
