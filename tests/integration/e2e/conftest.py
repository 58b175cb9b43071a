"""The whole pipeline (connector, compactor, query service as real processes) on fresh db + topics."""

from support.stacks import make_stack

__all__ = ["make_stack"]
