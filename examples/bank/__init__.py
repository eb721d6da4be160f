"""A small bank: accounts, deposits and transfers with a ledger, written on uow."""
