"""Transport-free FL building blocks: wire types (protocol), the server context with ``track`` (session), FedAvg
rounds and the one failure rule (fedavg), the transport ABC, the update history, the training recipe."""
