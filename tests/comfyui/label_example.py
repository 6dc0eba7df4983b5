"""The Label Songs → Encode Dataset → Train Adapter example: its API graph, its note, the tiny LMs it runs on, and
its builder (`python -m tests.comfyui.label_example`, same frontend conversion as build_examples.py)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from sidestep.atomic import write_text_atomic
from sidestep.tiny_models import (
    COMFY_LM_FILE,
    COMFY_LM_VOCAB,
    LM_FOLDER,
    make_tiny_checkpoints,
    write_tiny_comfy_lm,
    write_tiny_lm,
)

from .build_examples import to_workflow
from .fixtures_pack import (
    SONGS,
    TURBO,
    _checkpoint,
    _configure,
    _encode,
    _node,
    _train,
    example_path,
)
from .host import ComfyUIHost, open_frontend

NAME = "label_encode_train"
LM_LABEL = f"{LM_FOLDER}  [official]"
COMFY_LM_LABEL = f"{COMFY_LM_FILE}  [comfyui]"
RUN = "my_labelled_lora"


def _label(lm: str) -> dict[str, Any]:
    return _node(
        "SideStepLabelSongs", "Label Songs",
        model=["1", 0], lm=lm, audio_folder=SONGS, caption=True, metadata=True, lyrics=True, overwrite="empty",
        trigger_word="", temperature=0.7, top_p=1.0, seed=0, constrained=True,
    )


def label_graph(lm: str = LM_LABEL) -> dict[str, Any]:
    """Checkpoint → Label Songs → Encode Dataset (its song folder linked from Label Songs) → adapter config → training."""
    encode = _encode("1", "sidestep/datasets/my_labelled_songs")
    encode["inputs"]["audio_folder"] = ["8", 0]
    return {"1": _checkpoint(TURBO), "8": _label(lm), "2": encode, "3": _configure("lora"), "4": _train(RUN, epochs=20)}


NOTE = (
    "Label your songs with ACE-Step's own 5 Hz LM, then encode and train.\n\n"
    "Put the songs in ComfyUI/input/sidestep/songs. Label Songs writes a song.txt beside each song (caption, bpm, "
    "keyscale, timesignature, language, lyrics) and never changes a field you wrote yourself; its table shows what "
    "it wrote, so read it and edit the song.txt files before encoding if you like (queue again: edited songs are "
    "encoded again, labelled songs are skipped). The LM is acestep-5Hz-lm-0.6B/1.7B/4B next to the ACE-Step "
    "checkpoints in ComfyUI/models/acestep, or ComfyUI's text_encoders/qwen_1.7b_ace15.safetensors; it is freed "
    "before encoding starts."
)


def write_lms(acestep_root: Path, text_encoders: Path) -> None:
    """A tiny official-layout LM folder beside the tiny checkpoints, and a tiny ComfyUI-layout LM file whose
    vocabulary fits ComfyUI's own Qwen tokenizer plus the audio codes."""
    if not (acestep_root / LM_FOLDER).exists():
        write_tiny_lm(acestep_root / LM_FOLDER)
    if not (text_encoders / COMFY_LM_FILE).exists():
        write_tiny_comfy_lm(text_encoders / COMFY_LM_FILE, vocab_size=COMFY_LM_VOCAB)


def main() -> None:
    """Start ComfyUI with the pack, a tiny checkpoint tree and a tiny LM, and rewrite the example."""
    with tempfile.TemporaryDirectory() as models:
        acestep, text_encoders = Path(models) / "acestep", Path(models) / "text_encoders"
        make_tiny_checkpoints(acestep)
        text_encoders.mkdir()
        write_lms(acestep, text_encoders)
        folders = {"acestep": acestep, "text_encoders": text_encoders}
        with ComfyUIHost(model_folders=folders, name="build-examples") as host, open_frontend(host) as page:
            workflow = to_workflow(page, NAME, label_graph(), NOTE)
            write_text_atomic(example_path(NAME), json.dumps(workflow, indent=2) + "\n")
            example_path(NAME).chmod(0o644)
            print(f"wrote {example_path(NAME)}")


if __name__ == "__main__":
    main()
