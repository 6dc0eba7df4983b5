"""Audio → 5 Hz audio codes → the LM's understanding prompt, exactly as ACE-Step builds them.

Codes: the song's 25 Hz VAE latents go through the DiT's own audio tokenizer (attention pooler + residual FSQ, padded
with silence frames to a whole 5-frame window); each code index becomes `<|audio_code_N|>` (the official
`convert_src_audio_to_codes`). Prompt: the understanding instruction as the system turn, the code string as the user
turn and the assistant turn opened (the official `build_formatted_prompt_for_understanding`), through the LM's own
chat template when it ships one, else through the Qwen chat layout ComfyUI's LM files are used with.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from ..model import AceStepConditionGenerationModel
from ..variants import inference_dtype

UNDERSTAND_INSTRUCTION = "Understand the given musical conditions and describe the audio semantics accordingly:"
SYSTEM_TEXT = f"# Instruction\n{UNDERSTAND_INSTRUCTION}\n\n"
CODES_PER_SECOND = 5


def audio_code_indices(
    model: AceStepConditionGenerationModel, latents: torch.Tensor, silence_latent: torch.Tensor
) -> list[int]:
    """The 5 Hz code indices of one song's latents [T, 64] (T at 25 Hz), using the model's audio tokenizer."""
    weight = next(model.tokenizer.parameters())
    with torch.inference_mode():
        _, indices = model.tokenize(
            latents.unsqueeze(0).to(weight.device, inference_dtype(weight.dtype, weight.device)), silence_latent.to(weight.device)
        )
    return [int(index) for index in indices.flatten().tolist()]


def code_string(indices: list[int]) -> str:
    """Code indices as the LM reads them: `<|audio_code_N|>` tokens run together."""
    return "".join(f"<|audio_code_{index}|>" for index in indices)


def understanding_prompt(codes: str, tokenizer: PreTrainedTokenizerBase | None = None) -> str:
    """The chat-formatted understanding prompt for a code string, ending where the assistant's answer starts:
    `tokenizer`'s own chat template when given, else the Qwen layout."""
    if tokenizer is not None:
        messages = [{"role": "system", "content": SYSTEM_TEXT}, {"role": "user", "content": codes}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return (
        f"<|im_start|>system\n{SYSTEM_TEXT}<|im_end|>\n"
        f"<|im_start|>user\n{codes}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
