"""Adapters on the DiT decoder: LoRA (PEFT) and LoKR (LyCORIS) for training, loading any adapter form, ComfyUI export.

One form, `loaded.LoadedAdapter`, carries an adapter everywhere after training: files load into it, a training adapter
hands its weights over as one, export writes it and ComfyUI patches are made from it. Import the submodules (`config`,
`metadata`, `training`, `files`, `apply`, `export`); this package imports nothing itself so that reading `config`
stays cheap (PEFT and LyCORIS load only when an adapter is built or loaded).
"""
