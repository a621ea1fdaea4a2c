"""The worker: the loop that claims tasks under a lease (loop.py), one task's run with its progress and cancellation
(run.py), the images' encoding, provenance and upload off the generation thread (outputs.py), and that thread."""
