"""Image bytes: decoding init images within the limits, encoding results, and the generation record written into
them (provenance.py)."""
