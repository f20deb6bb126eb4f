"""The ledgers FL writes and the audit reads (part of the results contract): the data-access ledger with the
withdrawal window (access), and the cost ledger (costs)."""
