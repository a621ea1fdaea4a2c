"""LoRA, LoHa and LoKr: one home, one chain.

- the request value types (LoraRequest, LoraSpec, MAX_LORA_WEIGHT) are pure and live in sdapi.core.request;
- files.py reads a file, computes its ΔW and decides whether it fits a model (check_fits), and nothing else does;
- library.py is the folder of files the API lists and resolves requests against;
- merging.py merges ΔW into loaded torch modules and restores them exactly (the torch engine and the exporter).
"""
