"""What a model on disk is: its family (families.py), the sha256 of its weights and of other files (digests.py), and
the manifest of its ONNX export (export_manifest.py)."""
