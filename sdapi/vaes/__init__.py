"""VAEs as an add-on kind: the library of vae.dir (library.py) and their use for one run (running.py)."""
