"""Transport-free FL building blocks: wire types, ledgers, the session context, FedAvg, the transport ABC, the training recipe."""
