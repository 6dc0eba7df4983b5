"""ACE-Step 1.5 as ComfyUI users have it, in a real ComfyUI 0.20.1: the files in the Load node's list, validation
errors before anything runs, training on ComfyUI's own loaded models into its native generation, and Unload Models."""

from __future__ import annotations

import json
import re

import psutil
import pytest
import requests

from sidestep.tiny_models import COMFY_DIT_FILES

from .fixtures_pack import CLIP_LM_FILE, COMFY_RUN, COMFY_TURBO, TURBO, _checkpoint, _encode
from .host import ARTIFACTS_DIR, ComfyUIHost, Frontend, PromptRejected
from .test_nodes import assert_song, run_example, run_folder, run_prompt, saved_flac

UNLOAD_LINE = re.compile(r"Side-Step: ComfyUI unloaded the (\w+) of (\S+)")


def test_load_node_lists_comfyui_files_first_with_their_parts(pack: ComfyUIHost) -> None:
    node = pack.object_info()["SideStepLoadCheckpoint"]["input"]
    models = node["required"]["model"][1]["options"]
    assert models[0] == COMFY_TURBO and TURBO in models
    text_encoders = node["required"]["text_encoder"][1]["options"]
    assert text_encoders[:2] == ["auto", "qwen_0.6b_ace15.safetensors"] and CLIP_LM_FILE in text_encoders
    assert node["required"]["vae"][1]["options"] == ["auto", "ace_1.5_vae.safetensors"]


def test_validation_refuses_the_language_model_as_text_encoder_before_running(pack: ComfyUIHost) -> None:
    checkpoint = _checkpoint(COMFY_TURBO)
    checkpoint["inputs"]["text_encoder"] = CLIP_LM_FILE
    with pytest.raises(PromptRejected) as rejected:
        pack.queue({"1": checkpoint, "2": _encode("1", "sidestep/datasets/never")})
    message = json.dumps(rejected.value.body)
    assert "2048-wide features" in message and "5 Hz language model" in message


def test_training_on_comfyui_models_chains_into_native_generation(pack: ComfyUIHost, browser_page: Frontend) -> None:
    """The shipped example: stock loaders → Side-Step training → adapter on ComfyUI's MODEL → KSampler → Save Audio."""
    run = run_example(
        pack, browser_page, "train_on_comfyui_models",
        SideStepTrainAdapter={"epochs": 2, "save_every": 1},
        **{
            "TextEncodeAceStepAudio1.5": {"generate_audio_codes": False, "duration": 2.0},
            "EmptyAceStep1.5LatentAudio": {"seconds": 2.0},
        },
    )
    assert (run_folder(pack, COMFY_RUN) / "final" / "adapter_model.safetensors").is_file()
    assert_song(saved_flac(pack, run, node="15"), 2.0)


def _server_rss(host: ComfyUIHost) -> int:
    """Resident memory of the ComfyUI server process, in bytes."""
    return psutil.Process(host.pid).memory_info().rss


def test_unload_models_frees_what_side_step_loaded(pack: ComfyUIHost) -> None:
    """Encoding loads our text encoder, VAE and condition encoder from ComfyUI's files; POST /free releases them."""
    run = run_prompt(pack, {"1": _checkpoint(COMFY_TURBO), "2": _encode("1", "sidestep/datasets/unload_probe")})
    assert run.entry["status"]["status_str"] == "success", pack.log_tail()
    before = _server_rss(pack)
    seen = len(UNLOAD_LINE.findall(pack.log_text()))

    def unloaded() -> set[str]:
        return {part for part, name in UNLOAD_LINE.findall(pack.log_text())[seen:] if name == COMFY_DIT_FILES["turbo"]}

    requests.post(f"{pack.url}/free", json={"unload_models": True, "free_memory": True}, timeout=30).raise_for_status()
    pack.wait_for_log(lambda _: unloaded() == {"dit", "text_encoder", "vae"})
    # ComfyUI's worker collects garbage right after unloading; the memory returns to the system then.
    pack.wait_until(lambda: _server_rss(pack) < before - 1_000_000_000, what="the server's memory to drop by 1 GB")
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    measured = {"rss_before_bytes": before, "rss_after_bytes": _server_rss(pack)}
    (ARTIFACTS_DIR / "unload_models_rss.json").write_text(json.dumps(measured))
