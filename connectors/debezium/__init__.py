"""Debezium as a source (issue 18): a team that already runs the Debezium PostgreSQL connector on its catalog
points walduck at Debezium's topics instead of a second replication slot.

Layers, each saying what it does not do:

1. :mod:`connectors.debezium.events` — one Debezium change event (per-table topic, JSON with or without the
   converter's schema envelope) -> the fields of a walduck change record; pure, no Kafka.
2. :mod:`connectors.debezium.assembler` — events of many topic partitions + the transaction metadata topic's
   END events -> whole transactions in commit order as walduck change records (``tx_index``/``tx_size`` per
   Kafka key, the commit LSN), and the input offsets that are safe to commit; pure, no Kafka.
3. :mod:`connectors.debezium.source` — the Kafka loop: consume Debezium's topics, publish the records to the
   changes topic with the connector's publisher, heartbeats, commit input offsets only after Kafka
   acknowledged what they produced. The compactor and everything after it are unchanged.
"""
