"""Adapters on the DiT decoder: LoRA (PEFT) and LoKR (LyCORIS) for training, loading any adapter form, ComfyUI export.

Import the submodules (`config`, `training`, `files`, `apply`, `export`); this package imports nothing itself so that
reading `config` stays cheap (PEFT and LyCORIS load only when an adapter is built or loaded).
"""
