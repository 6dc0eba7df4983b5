"""Label Songs: parity with the official 5 Hz LM code (codes, prompt, parser), constrained decoding on a tiny LM with
audio-code tokens, refusal of models that are not the 5 Hz LM, and sidecars that keep every label the user wrote."""

from __future__ import annotations

import json
import os
import re
import shutil
import tomllib
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace

import pytest
import soundfile
import torch
from packaging.requirements import Requirement
from safetensors import safe_open
from transformers import AutoTokenizer

from sidestep.bundle import open_checkpoint
from sidestep.model_folders import load_silence_latent
from sidestep.cli import main
from sidestep.dataset.sidecars import read_song_metadata
from sidestep.demo import write_demo_songs
from sidestep.errors import CheckpointError, DatasetError
from sidestep.labeling.decode import generate_answer
from sidestep.labeling.label import (
    LABELS_FILE,
    LabelConfig,
    label_songs,
    update_song_txt,
)
from sidestep.labeling.lm import AUDIO_CODES, LoadedLm, find_lms, load_lm, pick_lm
from sidestep.labeling.parse import (
    KEYSCALES,
    LANGUAGES,
    TIME_SIGNATURES,
    extract_lyrics,
    parse_lm_output,
    understanding_fields,
    validate,
)
from sidestep.labeling.settings import Sampling
from sidestep.labeling.prompt import (
    audio_code_indices,
    code_string,
    understanding_prompt,
)
from sidestep.model import AceStepConditionGenerationModel
from sidestep.tiny_models import (
    COMFY_LM_FILE,
    LM_FOLDER,
    TEXT_ENCODER_FOLDER,
    write_tiny_comfy_lm,
    write_tiny_lm,
    write_tiny_text_tokenizer,
)

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
OFFICIAL = FIXTURES / "labeling"
TURBO = FIXTURES / "ace15" / "turbo"
QUICK = Sampling(max_caption_tokens=12, max_answer_tokens=96)


def _official(name: str) -> dict:
    return json.loads((OFFICIAL / name).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tiny_lm_dir(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkpoint root's acestep-5Hz-lm-0.6B: a tiny Qwen3 causal LM with the 64000 audio-code tokens."""
    folder = tiny_root / LM_FOLDER
    if not folder.exists():
        write_tiny_lm(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_lm(tiny_lm_dir: Path):
    return load_lm(tiny_lm_dir)


# ---------------------------------------------------------------- parity with the official code


@pytest.mark.parametrize("case", _official("official_parse.json")["cases"], ids=lambda case: case["output"][:24])
def test_parser_gives_exactly_the_official_fields_including_for_malformed_answers(case):
    metadata, codes = parse_lm_output(case["output"])
    assert metadata == case["metadata"]
    assert codes == case["audio_codes"]
    assert extract_lyrics(case["output"]) == case["lyrics"]


def test_understanding_fields_add_the_lyrics_and_our_vocal_language_to_the_official_fields():
    for case in _official("official_parse.json")["cases"]:
        extra = {"lyrics": case["lyrics"]} if case["lyrics"] else {}
        if "language" in case["metadata"]:
            extra["vocal_language"] = case["metadata"]["language"]
        assert understanding_fields(case["output"]) == case["metadata"] | extra


def test_code_string_equals_the_official_tokenizer_codes_for_fixed_latents():
    model = AceStepConditionGenerationModel.from_pretrained(TURBO, parts=("tokenizer",))
    silence = load_silence_latent(TURBO / "silence_latent.safetensors")
    expected = _official("official_codes.json")["codes"]
    with safe_open(str(TURBO / "vectors_condition.safetensors"), "pt") as vectors:
        for prefix in ("", "odd/"):
            latents = vectors.get_tensor(f"{prefix}in/src_latents")
            for row in range(latents.shape[0]):
                codes = code_string(audio_code_indices(model, latents[row], silence))
                assert codes == expected[f"{prefix}src_latents[{row}]"]
    assert codes.count("<|audio_code_") == -(-latents.shape[1] // 5)  # 251 frames → 51 codes (silence-padded)


def test_understanding_prompt_equals_the_official_chat_prompt_and_its_token_ids(tiny_lm):
    for recorded in _official("official_prompt.json")["prompts"]:
        prompt = understanding_prompt(recorded["codes"])
        assert prompt == recorded["prompt"]
        # The recorded ids come from Qwen's tokenizer; the code tokens sit at 151669 + N there and at
        # first_code_id + N in any 5 Hz LM tokenizer, including the tiny one.
        ids = tiny_lm.tokenizer.encode(prompt, add_special_tokens=False)
        recorded_codes = [i - 151669 for i in recorded["token_ids"] if i >= 151669]
        assert [i - tiny_lm.first_code_id for i in ids if i >= tiny_lm.first_code_id] == recorded_codes
        assert tiny_lm.tokenizer.decode(ids) == prompt


# ---------------------------------------------------------------- validation and decoding


def test_validation_keeps_official_values_and_reports_the_rest():
    good = validate({
        "bpm": 120, "keyscale": "f# MINOR", "timesignature": "4", "language": "EN", "caption": " c ",
        "genres": "pop,\n  rock", "lyrics": "la",
    })
    assert (good.bpm, good.keyscale, good.timesignature, good.language, good.caption) == (120, "F# minor", "4", "en", "c")
    assert (good.genre, good.lyrics, good.problems) == ("pop, rock", "la", [])
    bad = validate({"bpm": 400, "keyscale": "H major", "timesignature": "7/8", "language": "klingon"})
    assert bad.fields() == {}
    assert len(bad.problems) == 4 and "400" in bad.problems[0]
    assert validate({"bpm": "fast"}).bpm is None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_constrained_answers_always_parse_into_official_values(tiny_lm, seed):
    sampling = Sampling(temperature=1.0, top_p=0.95, seed=seed, max_caption_tokens=8, max_answer_tokens=80)
    answer = generate_answer(tiny_lm, understanding_prompt(code_string([5, 17, 63999, 0] * 5)), sampling)
    metadata, _ = parse_lm_output(answer)
    assert list(metadata) == ["bpm", "caption", "duration", "genres", "keyscale", "language", "timesignature"]
    labels = validate(understanding_fields(answer))
    assert labels.problems == []
    assert 30 <= labels.bpm <= 300 and labels.keyscale in KEYSCALES
    assert labels.language in LANGUAGES and labels.timesignature in TIME_SIGNATURES
    assert 10 <= labels.duration <= 600 and labels.caption and labels.genre


def test_same_seed_same_answer_and_greedy_is_repeatable(tiny_lm):
    prompt = understanding_prompt(code_string([1, 2, 3]))
    sampling = Sampling(seed=7, max_caption_tokens=6, max_answer_tokens=60)
    first = generate_answer(tiny_lm, prompt, sampling)
    assert generate_answer(tiny_lm, prompt, sampling) == first
    greedy = Sampling(temperature=0, max_caption_tokens=6, max_answer_tokens=60)
    assert generate_answer(tiny_lm, prompt, greedy) == generate_answer(tiny_lm, prompt, greedy)


class ScriptedLm(torch.nn.Module):
    """A causal LM that wants to write `answer`: after the prompt, its logits favour (by `margin`) the next token of
    the answer's own tokenization, or of the rest of the answer where the text so far ends between those tokens."""

    def __init__(self, tokenizer, answer: str, margin: float = 40.0, strict: bool = True) -> None:
        super().__init__()
        self.tokenizer, self.answer, self.margin, self.strict = tokenizer, answer, margin, strict
        self.vocab = len(tokenizer)
        self.target = tokenizer.encode(answer, add_special_tokens=False)
        self.after = {tokenizer.decode(self.target[:k]): self.target[k] for k in range(len(self.target))}
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # where the LM "lives"
        self.seen: list[int] | None = None

    def forward(self, input_ids, use_cache=True, logits_to_keep=1, **cache):
        self.seen = [] if self.seen is None else self.seen + input_ids[0].tolist()
        text = self.tokenizer.decode(self.seen)
        if text in self.after:
            wanted = self.after[text]
        elif self.answer.startswith(text) and text != self.answer:
            wanted = self.tokenizer.encode(self.answer[len(text):], add_special_tokens=False)[0]
        else:
            assert not self.strict or text == self.answer, f"the decoder left the answer: {text!r}"
            wanted = self.target[-1]  # off script: end the turn
        logits = torch.zeros(1, 1, self.vocab)
        logits[0, 0, wanted] = self.margin
        return SimpleNamespace(logits=logits)


def _scripted(tiny_lm: LoadedLm, answer: str, margin: float = 40.0, strict: bool = True) -> LoadedLm:
    model = ScriptedLm(tiny_lm.tokenizer, answer, margin, strict)
    return LoadedLm("scripted", model, tiny_lm.tokenizer, tiny_lm.first_code_id)


def test_an_official_answer_comes_through_the_constrained_decoder_whole(tiny_lm):
    case = _official("official_parse.json")["cases"][10]  # yaml.dump-wrapped caption, genres, lyrics
    assert "electronic\n  drums" in case["output"] and case["metadata"]["genres"]
    prompt = understanding_prompt(code_string([5, 6, 7]))
    answer = generate_answer(_scripted(tiny_lm, case["output"]), prompt, Sampling(temperature=0))
    assert answer == case["output"]
    assert parse_lm_output(answer)[0] == case["metadata"]
    assert len(case["metadata"]["caption"]) > 160
    labels = validate(understanding_fields(answer))
    assert (labels.caption, labels.genre, labels.lyrics) == (
        case["metadata"]["caption"], case["metadata"]["genres"], case["lyrics"]
    )


def test_top_p_filters_the_raw_probabilities_before_the_temperature(tiny_lm):
    # The answer's tokens hold ~90 % of the raw probability: top-p 0.5 keeps them alone, however hot the sampling.
    case = _official("official_parse.json")["cases"][12]
    lm = _scripted(tiny_lm, case["output"], margin=15.0)
    answer = generate_answer(lm, understanding_prompt(code_string([1])), Sampling(temperature=5.0, top_p=0.5, seed=3))
    assert answer == case["output"]


def test_a_caption_stops_at_its_token_limit_and_the_lyrics_at_the_answer_budget(tiny_lm):
    case = _official("official_parse.json")["cases"][10]
    lm = _scripted(tiny_lm, case["output"], strict=False)
    answer = generate_answer(lm, understanding_prompt(code_string([1])), Sampling(temperature=0, max_caption_tokens=5))
    written = re.search(r"\ncaption:([^\n]*)\nduration: ", answer).group(1)  # 5 tokens, then the forced line end
    assert written.strip() and len(written.split()) <= 5 and case["metadata"]["caption"].startswith(written.strip())
    lm = _scripted(tiny_lm, case["output"])
    answer = generate_answer(lm, understanding_prompt(code_string([1])), Sampling(temperature=0, max_answer_tokens=20))
    assert answer.endswith("</think>") and parse_lm_output(answer)[0] == case["metadata"]


# ---------------------------------------------------------------- finding and loading the LM


def test_comfyui_lm_file_loads_with_a_plain_qwen_tokenizer_and_gets_the_audio_codes(tmp_path):
    tokenizer_dir = write_tiny_text_tokenizer(tmp_path / "qwen25_tokenizer")
    base = len(AutoTokenizer.from_pretrained(str(tokenizer_dir)))
    lm_file = write_tiny_comfy_lm(tmp_path / "text_encoders" / COMFY_LM_FILE, vocab_size=base + 2 + AUDIO_CODES + 30)
    entries = find_lms([tmp_path], [tmp_path / "text_encoders"])
    assert [(e.name, e.kind) for e in entries] == [(COMFY_LM_FILE, "comfyui")]
    assert pick_lm("", entries) == lm_file
    lm = load_lm(lm_file, tokenizer_dir)
    assert lm.tokenizer.convert_tokens_to_ids("<|audio_code_0|>") == lm.first_code_id == base + 2
    assert not lm.own_template
    answer = generate_answer(lm, understanding_prompt(code_string([3, 4])), QUICK)
    assert validate(understanding_fields(answer)).problems == []


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _with_template(tiny_lm_dir: Path, folder: Path, template: str) -> Path:
    """A copy of the tiny LM folder whose tokenizer config ships `template`, as official LM folders ship theirs."""
    shutil.copytree(tiny_lm_dir, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    (folder / "tokenizer_config.json").write_text(json.dumps(config | {"chat_template": template}), encoding="utf-8")
    return folder


def test_the_prompt_uses_the_lm_folders_own_chat_template_when_it_ships_one(tiny_lm, tiny_lm_dir, tmp_path):
    assert not tiny_lm.own_template and tiny_lm.template_name == "built-in Qwen layout"
    recorded = _official("official_prompt.json")["prompts"][0]
    chatml = load_lm(_with_template(tiny_lm_dir, tmp_path / "chatml", CHATML))
    assert chatml.own_template and chatml.template_name == "the LM's own"
    assert understanding_prompt(recorded["codes"], chatml.tokenizer) == recorded["prompt"]
    marked = load_lm(_with_template(tiny_lm_dir, tmp_path / "marked", "[own] " + CHATML))
    assert understanding_prompt(recorded["codes"], marked.tokenizer) == "[own] " + recorded["prompt"]


def _declared_minima() -> dict[str, str]:
    """pyproject's lower bounds of transformers and tokenizers."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    found = {}
    for line in project["dependencies"]:
        requirement = Requirement(line)
        if requirement.name in ("transformers", "tokenizers"):
            found[requirement.name] = next(spec.version for spec in requirement.specifier if spec.operator == ">=")
    return found


def test_the_labelling_runs_on_the_transformers_and_tokenizers_the_pack_declares():
    """Both passes of scripts/test.sh (the venv's, then the oldest accepted from .venv/transformers-min) run on
    versions the pack accepts: tokenizers before 0.22.2 take minutes to load the LM's 64000 added tokens."""
    minima = _declared_minima()
    assert set(minima) == {"transformers", "tokenizers"}
    for name, minimum in minima.items():
        assert Requirement(f"{name}>={minimum}").specifier.contains(version(name)), (name, version(name))
    pins = dict(re.findall(r"\b(transformers|tokenizers)==([\w.]+)", (REPO / "scripts" / "setup.sh").read_text(encoding="utf-8")))
    assert pins == minima, "scripts/setup.sh's MIN_TRANSFORMERS must pin pyproject's minima"


def test_models_that_are_not_the_5hz_lm_are_refused_by_name(tiny_root, tmp_path):
    with pytest.raises(CheckpointError, match=f"{TEXT_ENCODER_FOLDER}.*not an ACE-Step 5 Hz LM.*audio-code"):
        load_lm(tiny_root / TEXT_ENCODER_FOLDER)
    tokenizer_dir = write_tiny_text_tokenizer(tmp_path / "tok")
    small = write_tiny_comfy_lm(tmp_path / "qwen_4b_ace15.safetensors", vocab_size=1000)
    with pytest.raises(CheckpointError, match="qwen_4b_ace15.safetensors is not an ACE-Step 5 Hz LM.*no room"):
        load_lm(small, tokenizer_dir)
    with pytest.raises(CheckpointError, match="carries no tokenizer"):
        load_lm(small)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_lm(tmp_path / "acestep-5Hz-lm-9B")
    with pytest.raises(CheckpointError, match="No 5 Hz LM 'nope'"):
        pick_lm("nope", [])


# ---------------------------------------------------------------- sidecars


def test_song_txt_update_changes_only_the_given_fields_and_keeps_other_lines(tmp_path):
    song = tmp_path / "a.txt"
    song.write_text("Caption: my words\nmood: sunny\nbpm: 90\nlyrics:\nla la\n", encoding="utf-8")
    update_song_txt(song, {"keyscale": "C major", "bpm": "100", "custom_tag": "sks"})
    assert song.read_text(encoding="utf-8") == (
        "Caption: my words\nmood: sunny\nbpm: 100\nkeyscale: C major\ntrigger: sks\nlyrics:\nla la\n"
    )
    plain = tmp_path / "b.txt"
    plain.write_text("just my lyrics\nsecond line\n", encoding="utf-8")
    update_song_txt(plain, {"caption": "new"})
    assert plain.read_text(encoding="utf-8") == "caption: new\nlyrics:\njust my lyrics\nsecond line\n"


@pytest.fixture()
def songs(tmp_path: Path) -> Path:
    """Three 1 s demo songs: one with a user caption/bpm, one with plain lyrics, one with nothing."""
    folder = write_demo_songs(tmp_path / "songs", seconds=1.0)
    (folder / "bright_arpeggio.txt").write_text("[Verse]\nmy own words\n", encoding="utf-8")
    (folder / "pulsing_bass.txt").unlink()
    return folder


def _text(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.txt"))}


def test_label_songs_fills_missing_fields_keeps_user_ones_and_skips_on_rerun(tiny_root, tiny_lm_dir, songs):
    bundle = open_checkpoint(tiny_root, "acestep-v15-turbo")
    config = LabelConfig(str(songs), str(tiny_lm_dir), sampling=QUICK, trigger_word="sks")
    events = []
    result = label_songs(bundle, config, callback=events.append)
    assert [(s.file, s.status) for s in result.songs] == [
        ("bright_arpeggio.wav", "labelled"), ("pulsing_bass.wav", "labelled"), ("warm_pad.wav", "labelled")
    ]
    assert {e.status for e in events} >= {"coding", "generating", "labelled"}
    assert bundle._dit is None and bundle._vae is None  # released before the LM loaded
    warm = read_song_metadata(songs / "warm_pad.wav")
    assert warm.caption == "sks, warm pad, demo" and warm.bpm == 100  # the user's caption and bpm survive
    assert warm.keyscale in KEYSCALES and warm.language in LANGUAGES and warm.timesignature in TIME_SIGNATURES
    assert result.songs[2].kept == ["caption", "bpm"]
    bright = read_song_metadata(songs / "bright_arpeggio.wav")
    assert bright.lyrics == "[Verse]\nmy own words" and bright.caption.startswith("sks, ")
    bass = read_song_metadata(songs / "pulsing_bass.wav")
    assert 30 <= bass.bpm <= 300 and bass.caption != "pulsing bass" and bass.lyrics
    records = json.loads((songs / LABELS_FILE).read_text(encoding="utf-8"))["songs"]
    assert records["pulsing_bass.wav"]["lm"] == LM_FOLDER and "caption" in records["pulsing_bass.wav"]["fields"]
    assert "caption" not in records["warm_pad.wav"]["fields"]

    before = _text(songs)
    again = label_songs(bundle, config)
    assert {s.status for s in again.songs} == {"done"}
    assert _text(songs) == before

    # A hand edit survives a new run with other settings; "all" rewrites only the chosen field group.
    (songs / "pulsing_bass.txt").write_text(before["pulsing_bass.txt"].replace("caption:", "caption: HAND EDIT,", 1), encoding="utf-8")
    edited = _text(songs)
    label_songs(bundle, LabelConfig(str(songs), str(tiny_lm_dir), sampling=Sampling(seed=5, max_caption_tokens=4, max_answer_tokens=60)))
    assert _text(songs) == edited
    label_songs(bundle, LabelConfig(str(songs), str(tiny_lm_dir), fields=("caption",), overwrite="all", sampling=QUICK))
    bass = read_song_metadata(songs / "pulsing_bass.wav")
    assert "HAND EDIT" not in bass.caption and bass.custom_tag == "sks"
    assert read_song_metadata(songs / "warm_pad.wav").bpm == 100


def test_user_values_in_any_form_permissions_and_silent_songs_survive_a_run(tiny_root, tiny_lm_dir, songs, tmp_path):
    warm = songs / "warm_pad.txt"
    warm.write_text("caption: warm pad\nbpm: fast\nkey: H major\nmood: calm\n", encoding="utf-8")
    os.chmod(warm, 0o640)
    soundfile.write(songs / "quiet.wav", torch.zeros(24000, 2).numpy(), 48000)
    for other in ("bright_arpeggio", "pulsing_bass"):  # one song to label is enough here
        (songs / f"{other}.wav").unlink()
        (songs / f"{other}.txt").unlink(missing_ok=True)
    lm_dir = _with_template(tiny_lm_dir, tmp_path / "acestep-5Hz-lm-own", CHATML)
    config = LabelConfig(str(songs), str(lm_dir), fields=("caption", "metadata"), sampling=QUICK)
    result = label_songs(open_checkpoint(tiny_root, "acestep-v15-turbo"), config)
    status = {song.file: song for song in result.songs}
    assert status["quiet.wav"].status == "failed" and "silent" in status["quiet.wav"].message
    assert not (songs / "quiet.txt").exists()
    text = warm.read_text(encoding="utf-8")
    assert text.startswith("caption: warm pad\nbpm: fast\nkey: H major\nmood: calm\n")  # the user's lines, untouched
    assert os.stat(warm).st_mode & 0o777 == 0o640
    assert status["warm_pad.wav"].status == "labelled"
    assert "your bpm kept as written but unreadable" in status["warm_pad.wav"].message
    assert set(status["warm_pad.wav"].written) == {"genre", "timesignature", "language"}
    assert re.search(r"^genres: \S", text, re.MULTILINE)
    meta = read_song_metadata(songs / "warm_pad.wav")
    assert meta.genre == status["warm_pad.wav"].written["genre"] and meta.bpm is None
    records = json.loads((songs / LABELS_FILE).read_text(encoding="utf-8"))["songs"]
    assert records["warm_pad.wav"]["chat_template"] == "the LM's own"
    assert "quiet.wav" not in records


def test_overwrite_never_leaves_labelled_songs_alone(tiny_root, tiny_lm_dir, songs):
    before = _text(songs)
    config = LabelConfig(str(songs), str(tiny_lm_dir), fields=("caption",), overwrite="never", sampling=QUICK)
    result = label_songs(open_checkpoint(tiny_root, "acestep-v15-turbo"), config)
    assert [s.status for s in result.songs] == ["kept", "labelled", "kept"]
    assert {name: text for name, text in _text(songs).items() if name in before} == before


def test_unreadable_answer_keeps_the_old_sidecar_and_reports_the_song(tiny_root, tiny_lm_dir, songs):
    before = _text(songs)
    free = Sampling(constrained=False, max_answer_tokens=6)
    result = label_songs(open_checkpoint(tiny_root, "acestep-v15-turbo"), LabelConfig(str(songs), str(tiny_lm_dir), sampling=free))
    assert {s.status for s in result.songs} == {"failed"}
    assert "could not be read" in result.songs[0].message and "sidecar kept" in result.songs[0].message
    assert _text(songs) == before and not (songs / LABELS_FILE).exists()


def test_bad_options_are_refused_before_anything_loads(tiny_root, songs):
    bundle = open_checkpoint(tiny_root, "acestep-v15-turbo")
    with pytest.raises(DatasetError, match="choose one or more of caption, metadata, lyrics"):
        label_songs(bundle, LabelConfig(str(songs), "unused", fields=("genre",)))
    with pytest.raises(DatasetError, match="overwrite 'sometimes'"):
        label_songs(bundle, LabelConfig(str(songs), "unused", overwrite="sometimes"))


def test_cli_label_then_encode_uses_the_labels(tiny_root, tiny_lm_dir, songs, tmp_path, capsys):
    for other in ("bright_arpeggio", "warm_pad"):  # the CLI decodes with the official (long) limits: one song
        (songs / f"{other}.wav").unlink()
        (songs / f"{other}.txt").unlink()
    code = main([
        "label", "--checkpoint-dir", str(tiny_root), "--dataset-dir", str(songs), "--fields", "caption,metadata",
        "--temperature", "0", "--seed", "3",
    ])
    out = capsys.readouterr().out
    assert code == 0, out
    assert re.search(r"pulsing_bass\.wav +labelled", out) and LM_FOLDER in out and "peak RAM" in out
    assert "lyrics" not in json.loads((songs / LABELS_FILE).read_text(encoding="utf-8"))["songs"]["pulsing_bass.wav"]["fields"]
    assert main(["encode", "--checkpoint-dir", str(tiny_root), "--dataset-dir", str(songs), "--output-dir", str(tmp_path / "ds")]) == 0
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text(encoding="utf-8"))
    bass = next(clip for clip in manifest["clips"] if clip["source"].endswith("pulsing_bass.wav"))
    labelled = read_song_metadata(songs / "pulsing_bass.wav")
    assert bass["caption"] == labelled.caption != "pulsing bass"
    assert bass["metadata"]["genre"] == labelled.genre != ""  # the genres line the LM wrote
    assert main(["label", "--checkpoint-dir", str(tiny_root), "--dataset-dir", str(songs), "--lm", "missing-lm"]) == 2
    assert "No 5 Hz LM 'missing-lm'" in capsys.readouterr().err
