"""The request side: admitting, reading, waiting for and cancelling tasks (tasks.py), what the service reports about
itself (status.py), the configured models (catalog.py), start estimates, quotas and change watching."""
