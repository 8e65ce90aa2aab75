"""Rewriting: the graph passes (``passes``), one run of them (``pipeline``), and the flows that run
them again (``budget``: --max-error; ``on_target``: latency-aware reruns; ``flow``: compress and inspect)."""
