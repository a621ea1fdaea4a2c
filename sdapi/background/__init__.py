"""Loops that run beside the request side and the worker on every node: the reaper of expired leases, the node
registry heartbeat, the retention sweep, the metrics refresher, and the poll-or-nudge sleep they share (wakeup.py)."""
