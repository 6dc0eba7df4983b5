"""Where ComfyUI keeps ACE-Step 1.5's parts: the key prefixes inside its files and its tokenizer folder (plain facts,
importable without torch's model libraries, so listing models starts fast)."""

AIO_DIT_PREFIX = "model.diffusion_model."
AIO_VAE_PREFIX = "vae."
AIO_TEXT_ENCODER_PREFIX = "text_encoders.qwen3_06b.transformer.model."
TEXT_ENCODER_PREFIX = "model."
COMFY_TOKENIZER_DIR = "comfy/text_encoders/qwen25_tokenizer"  # inside a ComfyUI installation
