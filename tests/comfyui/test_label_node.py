"""Label Songs in a real ComfyUI: its definition, the Label → Encode → Train example run through the real frontend,
both LM sources (official folder, ComfyUI text-encoder file with ComfyUI's own Qwen tokenizer), and re-runs that skip."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sidestep.dataset.sidecars import apply_tag, read_song_metadata
from sidestep.labeling.label import LABELS_FILE
from sidestep.labeling.parse import KEYSCALES, LANGUAGES
from sidestep.tiny_models import COMFY_LM_FILE, LM_FOLDER

from .fixtures_pack import TRIGGER, example_path, strip_meta, substitute, without_newer_defaults, write_song
from .host import ComfyUIHost, Frontend
from .label_example import COMFY_LM_LABEL, LM_LABEL, NAME, label_graph, write_lms
from .test_nodes import Run, run_prompt

INPUTS = [
    "model", "lm", "audio_folder", "caption", "metadata", "lyrics", "overwrite", "trigger_word", "temperature", "top_p",
    "seed", "constrained",
]
FOLDER = "sidestep/label_songs"
TIMEOUT = 900.0  # only catches a hang: the tiny LM, VAE and trainer share a small CPU with other work


@pytest.fixture(scope="module")
def lm_pack(pack: ComfyUIHost, comfy_models: dict[str, Path], tiny_tree: Path) -> ComfyUIHost:
    """The session server with a tiny official LM folder and a tiny ComfyUI LM file in place."""
    write_lms(tiny_tree, comfy_models["text_encoders"])
    return pack


@pytest.fixture(scope="module")
def song_folder(lm_pack: ComfyUIHost) -> Path:
    """input/sidestep/label_songs: a song with the user's caption and bpm, a bare song, and a broken file."""
    folder = lm_pack.input_dir / FOLDER
    write_song(folder / "mine.wav", 1.0, seed=1)
    (folder / "mine.txt").write_text("caption: my own words\nbpm: 97\n", encoding="utf-8")
    write_song(folder / "bare.wav", 1.0, seed=2)
    (folder / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk")
    return folder


def sidecars(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.txt"))}


def succeeded(host: ComfyUIHost, prompt: dict[str, Any]) -> Run:
    run = run_prompt(host, prompt, timeout=TIMEOUT)
    assert run.entry["status"]["status_str"] == "success", f"{run.entry['status']}\n{host.log_tail()}"
    return run


@pytest.fixture(scope="module")
def example_run(lm_pack: ComfyUIHost, browser_page: Frontend, song_folder: Path) -> Run:
    """The shipped example converted by the real frontend, pointed at the test songs, with one training epoch."""
    browser_page.page.evaluate("async () => { await window.app.refreshComboInNodes(); }")
    browser_page.load_workflow(json.loads(example_path(NAME).read_text(encoding="utf-8")))
    prompt = browser_page.graph_to_prompt()
    expected = strip_meta(label_graph())
    assert without_newer_defaults(strip_meta(prompt), expected, lm_pack.object_info()) == expected, (
        f"{example_path(NAME)} is out of date"
    )
    prompt = substitute(prompt, "SideStepLabelSongs", audio_folder=FOLDER)
    prompt = substitute(prompt, "SideStepTrainAdapter", epochs=1, save_every=1)
    return succeeded(lm_pack, prompt)


def test_label_songs_definition_lists_both_lm_sources(lm_pack: ComfyUIHost) -> None:
    node = lm_pack.object_info()["SideStepLabelSongs"]
    assert node["display_name"] == "Label Songs" and node["category"] == "Side-Step"
    order = node["input_order"]["required"] + node["input_order"].get("optional", [])
    assert order[: len(INPUTS)] == INPUTS and node["output"] == ["STRING"]  # settings declared later follow
    for name, (_, options) in {**node["input"]["required"], **node["input"].get("optional", {})}.items():
        assert len(options.get("tooltip", "")) > 20, f"{name} has no tooltip"
    assert node["input"]["required"]["lm"][1]["options"][:2] == [LM_LABEL, COMFY_LM_LABEL]


def test_example_labels_then_encodes_the_labels_and_trains(lm_pack: ComfyUIHost, example_run: Run, song_folder: Path) -> None:
    (text,) = example_run.entry["outputs"]["8"]["text"]
    assert "mine.wav" in text and "bare.wav" in text and "broken.wav" in text and "peak RAM" in text
    statuses = {event["file"]: event["status"] for event in example_run.events("sidestep.label", "8")}
    assert statuses == {"bare.wav": "labelled", "mine.wav": "labelled", "broken.wav": "failed"}
    mine, bare = read_song_metadata(song_folder / "mine.wav"), read_song_metadata(song_folder / "bare.wav")
    assert mine.caption.endswith("my own words") and mine.bpm == 97  # the user's fields survive
    assert mine.keyscale in KEYSCALES and bare.language in LANGUAGES and 30 <= bare.bpm <= 300
    records = json.loads((song_folder / LABELS_FILE).read_text(encoding="utf-8"))["songs"]
    assert set(records) == {"bare.wav", "mine.wav"} and records["bare.wav"]["lm"] == LM_FOLDER
    assert bare.genre and "\ngenres: " in (song_folder / "bare.txt").read_text(encoding="utf-8")
    manifest = json.loads((lm_pack.output_dir / "sidestep/datasets/my_labelled_songs/manifest.json").read_text("utf-8"))
    encoded = {Path(clip["source"]).name: clip["caption"] for clip in manifest["clips"]}
    assert encoded["bare.wav"] == apply_tag(bare.caption, TRIGGER)  # Encode Dataset read the new sidecar
    assert (lm_pack.output_dir / "sidestep/my_labelled_lora/final/adapter_model.safetensors").is_file()


def test_requeue_skips_labelled_songs_and_changes_nothing(lm_pack: ComfyUIHost, example_run: Run, song_folder: Path) -> None:
    before = sidecars(song_folder)
    run = succeeded(lm_pack, example_run.prompt)
    statuses = {event["file"]: event["status"] for event in run.events("sidestep.label", "8")}
    assert statuses["bare.wav"] == "done" and statuses["mine.wav"] == "done"
    assert sidecars(song_folder) == before


def test_comfyui_lm_file_labels_with_comfyuis_own_tokenizer(lm_pack: ComfyUIHost, example_run: Run, song_folder: Path) -> None:
    before = read_song_metadata(song_folder / "mine.wav")
    graph = {key: node for key, node in label_graph(COMFY_LM_LABEL).items() if key in ("1", "8")}
    graph = substitute(graph, "SideStepLabelSongs", audio_folder=FOLDER, metadata=False, lyrics=False, overwrite="all")
    run = succeeded(lm_pack, graph)
    statuses = {event["file"]: event["status"] for event in run.events("sidestep.label", "8")}
    assert statuses["bare.wav"] == statuses["mine.wav"] == "labelled"
    records = json.loads((song_folder / LABELS_FILE).read_text(encoding="utf-8"))["songs"]
    assert records["mine.wav"]["lm"] == COMFY_LM_FILE and list(records["mine.wav"]["fields"]) == ["caption", "genre"]
    assert records["mine.wav"]["chat_template"] == "built-in Qwen layout"  # ComfyUI's files: never the tokenizer's own
    after = read_song_metadata(song_folder / "mine.wav")
    assert after.bpm == before.bpm == 97 and after.keyscale == before.keyscale
