"""Orchestration: the ``walduck`` command, local services, catalog migrations, the demo workload and benchmarks.

The top of the house: it imports the components (connectors, pipeline, sinks) and the shared vocabulary
(``walduck``); nothing below imports it.
"""
