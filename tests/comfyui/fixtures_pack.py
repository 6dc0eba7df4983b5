"""Fixtures and data for the node-pack tests: the tiny checkpoint tree, a tiny song folder, and the example graphs.

The example workflows in example_workflows/ are built from the API-format graphs below by the real frontend
(`python -m tests.comfyui.build_examples`); the tests check that the shipped files still convert back to them.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

from sidestep.tiny_models import BASE_FOLDER, COMFY_DIT_FILES, COMFY_TEXT_ENCODER_FILE, COMFY_VAE_FILE, TURBO_FOLDER

from .host import REPO_ROOT

EXAMPLES_DIR = REPO_ROOT / "example_workflows"
TURBO = f"{TURBO_FOLDER}  [official turbo]"
BASE = f"{BASE_FOLDER}  [official base]"
SONGS = "sidestep/songs"
SONG_SECONDS = 2.0
SAMPLE_RATE = 48_000
TRIGGER = "my_style"
LORA_RUN = "my_lora_turbo"
LOKR_RUN = "my_lokr_base"
CAPTION = f"{TRIGGER}, upbeat synthwave with airy female vocals, driving bassline"
COMFY_RUN = "my_lora_comfyui_files"
# The 5 Hz language model DualCLIPLoader (type ace) pairs with the text encoder, as in ComfyUI's ACE-Step 1.5 template.
CLIP_LM_FILE = "qwen_4b_ace15.safetensors"
COMFY_TURBO = f"{COMFY_DIT_FILES['turbo']} · ComfyUI diffusion model · turbo"


def _node(class_type: str, title: str, **inputs: Any) -> dict[str, Any]:
    """One API-format node with a title."""
    return {"class_type": class_type, "inputs": inputs, "_meta": {"title": title}}


def _checkpoint(label: str) -> dict[str, Any]:
    return _node(
        "SideStepLoadCheckpoint", "Load ACE-Step Checkpoint",
        model=label, base_model="auto", model_path="", dtype="auto", device="auto", text_encoder="auto", vae="auto",
    )


def _encode(model: str, dataset_folder: str) -> dict[str, Any]:
    return _node(
        "SideStepEncodeDataset", "Encode Dataset",
        model=[model, 0], audio_folder=SONGS, dataset_folder=dataset_folder, max_duration=0.0, normalize="none",
        skip_existing=True, trigger_word=TRIGGER, trigger_position="auto",
    )


def _configure(kind: str) -> dict[str, Any]:
    return _node(
        "SideStepConfigureAdapter", "Configure LoRA/LoKR",
        adapter_type=kind, rank=64, alpha=128.0, dropout=0.0, weight_decompose=False, lokr_factor=-1,
        lokr_decompose_both=False, target="attention", custom_modules="", loha_dim=32, loha_alpha=32.0, oft_block_size=32,
    )


def _train(run_name: str, epochs: int, resume_from: str = "", preview_every: int = 0) -> dict[str, Any]:
    return _node(
        "SideStepTrainAdapter", "Train Adapter",
        model=["1", 0], dataset=["2", 0], adapter_config=["3", 0], run_name=run_name, epochs=epochs,
        learning_rate=0.0001, optimizer="adamw", scheduler="cosine", warmup_steps=0, batch_size=1,
        gradient_accumulation=1, timestep_mode="auto", cfg_ratio=-1.0, save_every=5, seed=42, resume_from=resume_from,
        gradient_checkpointing=True, precision="auto", preview_caption=CAPTION if preview_every else "",
        preview_every=preview_every, validation="", validation_every=0, ema_decay=0.0, final_from_best=False,
        overwrite=False,
    )


def _load_adapter(model: str, adapter: list | None, adapter_file: str = "none") -> dict[str, Any]:
    inputs: dict[str, Any] = {"model": [model, 0], "adapter_file": adapter_file, "strength": 1.0}
    if adapter is not None:
        inputs["adapter"] = adapter
    return _node("SideStepLoadAdapter", "Load Adapter", **inputs)


def _sample(model: str) -> dict[str, Any]:
    return _node(
        "SideStepSampleWithShift", "Sample with Shift",
        model=[model, 0], caption=CAPTION, lyrics="[Instrumental]", language="en", duration=30.0, bpm=0, keyscale="",
        timesignature="", seed=42, steps=0, shift=0.0, guidance=-1.0, batch_size=1,
    )


def _save(prefix: str) -> dict[str, Any]:
    return _node("SaveAudio", "Save Audio", audio=["6", 0], filename_prefix=prefix)


def _train_and_listen(label: str, kind: str, dataset: str, train: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Checkpoint → dataset → adapter config → training → Load Adapter → sampling → Save Audio."""
    return {
        "1": _checkpoint(label),
        "2": _encode("1", dataset),
        "3": _configure(kind),
        "4": train,
        "5": _load_adapter("1", ["4", 0]),
        "6": _sample("5"),
        "7": _save(prefix),
    }


def _train_on_comfyui_models() -> dict[str, Any]:
    """ComfyUI's stock loaders → Side-Step training → the adapter patched onto ComfyUI's MODEL → native generation."""
    train = _train(COMFY_RUN, epochs=20)
    train["inputs"].update(model=["4", 0], dataset=["5", 0], adapter_config=["6", 0])
    return {
        "1": _node("UNETLoader", "Load Diffusion Model", unet_name=COMFY_DIT_FILES["turbo"], weight_dtype="default"),
        "2": _node(
            "DualCLIPLoader", "DualCLIPLoader", clip_name1=COMFY_TEXT_ENCODER_FILE, clip_name2=CLIP_LM_FILE, type="ace",
            device="default",
        ),
        "3": _node("VAELoader", "Load VAE", vae_name=COMFY_VAE_FILE),
        "4": _node("SideStepFromComfyModels", "ACE-Step from ComfyUI models", model=["1", 0], base_model="turbo", clip=["2", 0], vae=["3", 0]),
        "5": _encode("4", "sidestep/datasets/my_songs_comfyui"),
        "6": _configure("lora"),
        "7": train,
        "8": _node("SideStepApplyAdapterToModel", "Apply Adapter to ComfyUI MODEL", model=["1", 0], adapter_file="none", strength=1.0, adapter=["7", 0]),
        "9": _node(
            "TextEncodeAceStepAudio1.5", "TextEncodeAceStepAudio1.5", clip=["2", 0], tags=CAPTION, lyrics="[Instrumental]",
            seed=42, bpm=120, duration=30.0, timesignature="4", language="en", keyscale="E minor", generate_audio_codes=True,
            cfg_scale=2.0, temperature=0.85, top_p=0.9, top_k=0, min_p=0.0,
        ),
        "10": _node("ConditioningZeroOut", "ConditioningZeroOut", conditioning=["9", 0]),
        "11": _node("EmptyAceStep1.5LatentAudio", "Empty Ace Step 1.5 Latent Audio", seconds=30.0, batch_size=1),
        "12": _node("ModelSamplingAuraFlow", "ModelSamplingAuraFlow", model=["8", 0], shift=3.0),
        "13": _node(
            "KSampler", "KSampler", model=["12", 0], positive=["9", 0], negative=["10", 0], latent_image=["11", 0], seed=42,
            steps=8, cfg=1.0, sampler_name="euler", scheduler="simple", denoise=1.0,
        ),
        "14": _node("VAEDecodeAudio", "VAE Decode Audio", samples=["13", 0], vae=["3", 0]),
        "15": _node("SaveAudio", "Save Audio", audio=["14", 0], filename_prefix=f"sidestep/{COMFY_RUN}"),
    }


EXAMPLE_GRAPHS: dict[str, dict[str, Any]] = {
    "train_lora_turbo": _train_and_listen(
        TURBO, "lora", "sidestep/datasets/my_songs_turbo", _train(LORA_RUN, epochs=20), f"sidestep/{LORA_RUN}"
    ),
    "train_lokr_base_previews": _train_and_listen(
        BASE, "lokr", "sidestep/datasets/my_songs_base", _train(LOKR_RUN, epochs=20, preview_every=5),
        f"sidestep/{LOKR_RUN}",
    ),
    "generate_with_adapter": {
        "1": _checkpoint(TURBO),
        "5": _load_adapter("1", None, f"output/sidestep/{LORA_RUN}/final"),
        "6": _sample("5"),
        "7": _save("sidestep/generated"),
    },
    "resume_training": _train_and_listen(
        TURBO, "lora", "sidestep/datasets/my_songs_turbo", _train(LORA_RUN, epochs=40, resume_from="latest"),
        f"sidestep/{LORA_RUN}_resumed",
    ),
    "train_on_comfyui_models": _train_on_comfyui_models(),
}


_SONGS_NOTE = (
    "Put your songs (.wav/.flac/.mp3/...) in ComfyUI/input/sidestep/songs, each with an optional song.txt sidecar "
    "('caption: ...', 'bpm: ...', then 'lyrics:' and the lyrics), or type another folder into Encode Dataset. "
    "Pick any ACE-Step 1.5 model in Load ACE-Step Checkpoint: ComfyUI's own files (diffusion_models/"
    "acestep_v1.5_turbo.safetensors with text_encoders/qwen_0.6b_ace15 and vae/ace_1.5_vae, or an all-in-one checkpoint) "
    "or the official download tree in ComfyUI/models/acestep."
)
EXAMPLE_NOTES: dict[str, str] = {
    "train_lora_turbo": (
        "Train a LoRA on ACE-Step 1.5 turbo and hear it.\n\n" + _SONGS_NOTE + "\n\nThe run goes to "
        f"ComfyUI/output/sidestep/{LORA_RUN} (final/, checkpoints/, runs/ for TensorBoard) and "
        f"models/loras/sidestep_{LORA_RUN}.safetensors for ComfyUI's own LoRA loader. Use the trigger word "
        f"'{TRIGGER}' in your captions. Cancel stops after saving a checkpoint; queue again with resume_from 'latest' "
        "to continue.\n\nIs it learning? The widget draws the validation loss (fixed noises, so it moves only when the "
        "adapter does) beside the training loss and names the checkpoint with the lowest one; final_from_best makes "
        "final/ that checkpoint."
    ),
    "train_lokr_base_previews": (
        "Train a LoKR on ACE-Step 1.5 base, with a 10 s preview song every 5 epochs in "
        f"ComfyUI/output/sidestep/{LOKR_RUN}/previews.\n\n" + _SONGS_NOTE + "\n\nBase models sample with 50 steps "
        "and guidance 7 (0 / -1 = auto in Sample with Shift)."
    ),
    "generate_with_adapter": (
        "Generate with an adapter you trained earlier: pick it in Load Adapter (runs in output/sidestep, or files in "
        "models/loras). Chain more Load Adapter nodes to stack adapters. Leave steps, shift and guidance on auto to "
        "use what the adapter was trained for."
    ),
    "resume_training": (
        f"Continue the run '{LORA_RUN}' from its newest checkpoint (resume_from 'latest') up to 40 epochs. Keep the "
        "model, dataset and adapter settings of the original run."
    ),
    "train_on_comfyui_models": (
        "Train a LoRA on the ACE-Step 1.5 files ComfyUI already has (the ones its own ACE-Step 1.5 template downloads: "
        "diffusion_models/acestep_v1.5_turbo.safetensors, text_encoders/qwen_0.6b_ace15.safetensors with the "
        "qwen_4b_ace15 (or 1.7b) language model, vae/ace_1.5_vae.safetensors) and hear it through ComfyUI's own "
        "ACE-Step 1.5 generation.\n\nPut your songs in ComfyUI/input/sidestep/songs (optional song.txt sidecars). "
        "'ACE-Step from ComfyUI models' hands the loaded models to Side-Step without reading them again; 'Apply "
        "Adapter to ComfyUI MODEL' patches the trained adapter onto the MODEL that KSampler uses (turbo: 8 steps, "
        f"cfg 1, shift 3). The run goes to ComfyUI/output/sidestep/{COMFY_RUN}."
    ),
}


def example_path(name: str) -> Path:
    """The shipped UI-format workflow file of one example."""
    return EXAMPLES_DIR / f"{name}.json"


def load_example(name: str) -> dict[str, Any]:
    """The shipped UI-format workflow of one example."""
    return json.loads(example_path(name).read_text(encoding="utf-8"))


# Widgets the frontend adds to a converted prompt that the server ignores (Save Audio's player).
FRONTEND_ONLY_INPUTS = {"audioUI"}


def without_newer_defaults(prompt: dict[str, Any], expected: dict[str, Any], object_info: dict[str, Any]) -> dict[str, Any]:
    """A prompt converted from a saved example, less the settings declared after it was saved: the frontend gives each
    of those its default (checked here), as it does in every saved workflow it opens."""
    trimmed = {}
    for node_id, node in prompt.items():
        known = expected.get(node_id, {}).get("inputs", node["inputs"])
        optional = object_info.get(node["class_type"], {}).get("input", {}).get("optional", {})
        for name, value in node["inputs"].items():
            if name not in known:
                assert name in optional and value == optional[name][1].get("default"), (node["class_type"], name, value)
        trimmed[node_id] = {**node, "inputs": {name: value for name, value in node["inputs"].items() if name in known}}
    return trimmed


def strip_meta(prompt: dict[str, Any]) -> dict[str, Any]:
    """An API prompt without titles and frontend-only widgets, for comparing graphs."""
    return {
        node_id: {
            "class_type": node["class_type"],
            "inputs": {name: value for name, value in node["inputs"].items() if name not in FRONTEND_ONLY_INPUTS},
        }
        for node_id, node in prompt.items()
    }


def substitute(prompt: dict[str, Any], class_type: str, **values: Any) -> dict[str, Any]:
    """A copy of `prompt` with widget values of every node of `class_type` replaced."""
    changed = copy.deepcopy(prompt)
    hits = [node for node in changed.values() if node["class_type"] == class_type]
    assert hits, f"no {class_type} node in the prompt"
    for node in hits:
        unknown = set(values) - set(node["inputs"])
        assert not unknown, f"{class_type} has no inputs {unknown}"
        node["inputs"].update(values)
    return changed


def write_song(path: Path, seconds: float, seed: int) -> Path:
    """A short stereo 48 kHz noise clip (the tiny model does not care what it hears)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = np.random.default_rng(seed).standard_normal((int(seconds * SAMPLE_RATE), 2)).astype("float32") * 0.1
    soundfile.write(path, frames, SAMPLE_RATE)
    return path
