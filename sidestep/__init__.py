"""Side-Step core: ACE-Step 1.5 LoRA/LoKR training, independent of ComfyUI."""

__version__ = "0.1.0"
