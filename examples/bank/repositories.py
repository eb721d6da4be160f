"""The bank's repositories: the queries the services need, and nothing that commits."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from sqlalchemy import column, func, or_, select, table, union_all
from sqlalchemy.dialects.postgresql import aggregate_order_by

from uow import Repository

from .models import Account, LedgerEntry, StatementRequest

__all__ = [
    "IDEMPOTENCY_KEY_CONSTRAINT",
    "PENDING_STATEMENT_INDEX",
    "AccountRepository",
    "Audit",
    "LedgerRepository",
    "StatementRepository",
]

IDEMPOTENCY_KEY_CONSTRAINT = "uq_ledger_idempotency_key"
"""The unique constraint on ``ledger.idempotency_key`` (named by ``models.NAMING``)."""
PENDING_STATEMENT_INDEX = "uq_statement_requests_pending"
"""The partial unique index allowing one pending statement request per account and month."""

# procrastinate's jobs table, as far as the status endpoint reads it (its schema is
# procrastinate's, applied by a migration; the bank declares no model for it).
_PROCRASTINATE_JOBS = table("procrastinate_jobs", column("id"), column("status"))


class AccountRepository(Repository[Account]):
    """Accounts. Balances change only under a row lock taken by :meth:`lock`."""

    def create(self, owner: str, balance: int) -> Account:
        """Insert an account now and return it with its generated id.

        The opening deposit's ledger entry needs the id inside the same transaction.
        """
        account = self.add(Account(owner=owner, balance=balance))
        self.flush()
        return account

    def lock(self, *account_ids: int) -> dict[int, Account]:
        """Lock the accounts (``SELECT ... FOR UPDATE``) in ascending id order.

        Every writer locks in the same order, so two transfers in opposite directions
        between the same accounts queue behind each other instead of deadlocking.
        Missing ids are simply absent from the result.
        """
        found = self.list(Account.id.in_(account_ids), for_update=True, order_by=Account.id)
        return {account.id: account for account in found}

    def total_balance(self) -> int:
        """The sum of all balances, computed by the server."""
        total = self.session.scalar(select(func.coalesce(func.sum(Account.balance), 0)))
        return int(total or 0)


@dataclass(frozen=True, slots=True)
class Audit:
    """Balances checked against the ledger, as of one snapshot."""

    accounts: int
    total_balance: int
    total_deposits: int
    negative: int
    """How many accounts have a negative balance."""
    mismatched: int
    """How many accounts have a balance other than their ledger's net flow."""
    examples: tuple[int, ...]
    """Ids of a few accounts that are negative or mismatched, lowest first."""

    @property
    def ok(self) -> bool:
        """True if no balance is negative and every cent is explained by the ledger."""
        return (
            not self.negative and not self.mismatched and self.total_balance == self.total_deposits
        )


class LedgerRepository(Repository[LedgerEntry]):
    """The ledger: one entry per deposit or transfer, unique by idempotency key."""

    def by_key(self, key: str) -> LedgerEntry | None:
        """The entry recorded under this idempotency key, if any."""
        return self.get_by(idempotency_key=key)

    def of_account(self, account_id: int, *, after: int = 0) -> list[LedgerEntry]:
        """The entries moving money in or out of an account, oldest first.

        Args:
            account_id: the account.
            after: only entries with a higher id than this one.
        """
        return self.list(
            or_(LedgerEntry.source_id == account_id, LedgerEntry.target_id == account_id),
            LedgerEntry.id > after,
            order_by=LedgerEntry.id,
        )

    def audit(self, *, examples: int = 10) -> Audit:
        """Compare every balance with the ledger in one statement (one snapshot).

        The server sums each account's flows with a GROUP BY and returns only counts
        and a few offending ids, so the cost in memory does not grow with the data.
        """
        flows = union_all(
            select(LedgerEntry.target_id.label("account_id"), LedgerEntry.amount.label("delta")),
            select(LedgerEntry.source_id, -LedgerEntry.amount).where(
                LedgerEntry.source_id.is_not(None)
            ),
        ).subquery("flows")
        net = (
            select(flows.c.account_id, func.sum(flows.c.delta).label("net"))
            .group_by(flows.c.account_id)
            .subquery("net")
        )
        deposits = (
            select(func.coalesce(func.sum(LedgerEntry.amount), 0))
            .where(LedgerEntry.source_id.is_(None))
            .scalar_subquery()
        )
        negative = Account.balance < 0
        mismatched = Account.balance != func.coalesce(net.c.net, 0)
        offenders = func.array_agg(aggregate_order_by(Account.id, Account.id)).filter(
            negative | mismatched
        )
        stmt = select(
            func.count(Account.id),
            func.coalesce(func.sum(Account.balance), 0),
            deposits,
            func.count().filter(negative),
            func.count().filter(mismatched),
            offenders[1:examples],  # PostgreSQL arrays are 1-based and slices inclusive
        ).outerjoin_from(Account, net, net.c.account_id == Account.id)
        row = self.session.execute(stmt).one()
        return Audit(
            accounts=int(row[0]),
            total_balance=int(row[1]),
            total_deposits=int(row[2]),
            negative=int(row[3]),
            mismatched=int(row[4]),
            examples=tuple(int(i) for i in row[5] or ()),
        )


class StatementRepository(Repository[StatementRequest]):
    """Statement requests and the status of the jobs rendering them."""

    def reusable(self, account_id: int, month: date) -> StatementRequest | None:
        """The request a new one for this account and month should return, if any.

        That is the pending one (it will render the month soon), or else a complete
        statement (rendered after the month ended, so nothing can change it).
        """
        found = self.list(
            StatementRequest.account_id == account_id,
            StatementRequest.month == month,
            or_(
                StatementRequest.status == "pending",
                # == True, not the bare column: the in-memory fake evaluates comparisons.
                (StatementRequest.status == "done") & (StatementRequest.complete == True),  # noqa: E712
            ),
            order_by=StatementRequest.id.desc(),
            limit=1,
        )
        return found[0] if found else None

    def job_status(self, job_id: int) -> str | None:
        """procrastinate's status of a job (todo, doing, succeeded, failed...); None if gone."""
        status = self.session.scalar(
            select(_PROCRASTINATE_JOBS.c.status).where(_PROCRASTINATE_JOBS.c.id == job_id)
        )
        return None if status is None else str(status)
