"""IP-Adapter image prompts: the adapters in ip_adapter.dir with their image encoders (library.py), and applying
them to a torch pipeline for one run (running.py)."""
