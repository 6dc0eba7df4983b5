"""Adapters on the DiT decoder: every kind (LoRA/DoRA through PEFT; LoKR, LoHA, OFT through LyCORIS) for training,
loading any adapter form, ComfyUI export.

Each kind lives in one module under `kinds/`, and `kinds.KINDS` is the registry the rest asks. One form,
`loaded.LoadedAdapter`, carries an adapter everywhere after training: files load into it, a training adapter hands its
weights over as one, export writes it and ComfyUI patches are made from it. Import the submodules (`config`, `kinds`,
`metadata`, `training`, `files`, `apply`, `export`); this package imports nothing itself so that reading `config` stays
cheap (PEFT and LyCORIS load only when an adapter is built).
"""
