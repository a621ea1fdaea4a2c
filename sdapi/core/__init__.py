"""The pure core: the task state machine, request values and rules, deliveries, callers, nodes, result URLs and the
scheduler tables. It imports no I/O, model or web library; everything else builds on it."""
