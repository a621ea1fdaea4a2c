"""Neural upscalers: the ESRGAN family's RRDB network and its file layouts (rrdb.py), the folder of them
(library.py), and running one on a picture (running.py)."""
