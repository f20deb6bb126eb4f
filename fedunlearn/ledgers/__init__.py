"""The ledgers FL writes and the audit reads (results contract): the data-access ledger with the withdrawal window, and the cost ledger."""
