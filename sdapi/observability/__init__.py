"""What operators watch: the Prometheus metrics (metrics.py) and the log format with task and request ids (logs.py)."""
