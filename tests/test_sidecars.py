"""Per-song metadata: song.txt, caption/lyrics files, dataset JSON, fallbacks, precedence and tags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sidestep.dataset.sidecars import (
    INSTRUMENTAL,
    SongMetadata,
    apply_tag,
    caption_from_filename,
    load_dataset_json,
    read_song_metadata,
)
from sidestep.errors import DatasetError, SideStepError


def song(folder: Path, name: str = "song.wav") -> Path:
    """An audio file path (its content does not matter to sidecar reading)."""
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"RIFF")
    return path


def dataset_json(folder: Path, samples: list[dict], metadata: dict | None = None, name: str = "dataset.json") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"samples": samples} if metadata is None else {"metadata": metadata, "samples": samples}
    path.write_text(json.dumps(body, ensure_ascii=False), encoding="utf-8")
    return path


# --- song.txt --------------------------------------------------------------------------------


def test_song_txt_every_key_alias_and_a_lyrics_block(tmp_path: Path) -> None:
    audio = song(tmp_path)
    (tmp_path / "song.txt").write_text(
        "Caption: dreamy synthwave with warm pads\n"
        "GENRE: synthwave\n"
        "Tempo: 118.6\n"
        "Key: A minor\n"
        "Time Signature: 4\n"
        "language: en\n"
        "trigger: neonx\n"
        "is_instrumental: no\n"
        "duration: 185.5\n"
        "\n"
        "lyrics: [Verse 1]   \n"
        "Neon rain: falling down\n"
        "\n"
        "[Chorus]\n"
        "Hold on   \n"
        "\n\n  \n",
        encoding="utf-8",
    )

    meta = read_song_metadata(audio)

    assert meta == SongMetadata(
        caption="neonx, dreamy synthwave with warm pads",
        lyrics="[Verse 1]\nNeon rain: falling down\n\n[Chorus]\nHold on",
        bpm=119,
        keyscale="A minor",
        timesignature="4",
        language="en",
        custom_tag="neonx",
        genre="synthwave",
        is_instrumental=False,
        duration=185.5,
        source="song.txt",
        warnings=[],
    )


@pytest.mark.parametrize(
    ("line", "field", "value"),
    [
        ("keyscale: C major", "keyscale", "C major"),
        ("scale: C major", "keyscale", "C major"),
        ("key_scale: C major", "keyscale", "C major"),
        ("signature: 3", "timesignature", "3"),
        ("sig: 6/8", "timesignature", "6/8"),
        ("timesignature: 4", "timesignature", "4"),
        ("BPM: 90", "bpm", 90),
        ("custom_tag: mytag", "custom_tag", "mytag"),
        ("Custom Tag: mytag", "custom_tag", "mytag"),
        ("is_instrumental: TRUE", "is_instrumental", True),
        ("genres: j-pop, electropop", "genre", "j-pop, electropop"),  # the line Label Songs writes
    ],
)
def test_song_txt_key_aliases(tmp_path: Path, line: str, field: str, value: object) -> None:
    audio = song(tmp_path)
    (tmp_path / "song.txt").write_text(f"caption: x\n{line}\n", encoding="utf-8")
    meta = read_song_metadata(audio)
    assert getattr(meta, field) == value and meta.warnings == []


def test_song_txt_malformed_lines_are_warned_with_line_numbers(tmp_path: Path) -> None:
    audio = song(tmp_path)
    (tmp_path / "song.txt").write_text(
        "caption: lo-fi beat\n"
        "this line has no colon\n"
        "bpm: fast\n"
        "mood: chill\n"
        "is_instrumental: maybe\n"
        "duration: -3\n"
        "caption: lo-fi hip hop beat\n"
        "lyrics:\n"
        "Words: with colons stay lyrics\n",
        encoding="utf-8",
    )

    meta = read_song_metadata(audio)

    assert meta.warnings == [
        "song.txt:2: 'this line has no colon' is not a 'key: value' line; ignored",
        "song.txt:3: 'bpm: fast' is not a number; ignored",
        "song.txt:4: unknown key 'mood'; ignored",
        "song.txt:5: 'is_instrumental: maybe' is not true or false; ignored",
        "song.txt:6: 'duration: -3' is not a positive number; ignored",
        "song.txt:7: caption given again; this later value is used",
    ]
    assert meta.caption == "lo-fi hip hop beat"
    assert meta.bpm is None and meta.duration is None
    assert meta.lyrics == "Words: with colons stay lyrics" and not meta.is_instrumental


def test_song_txt_without_known_keys_is_plain_lyrics(tmp_path: Path) -> None:
    audio = song(tmp_path, "ballad.flac")
    (tmp_path / "ballad.txt").write_text("\n[Verse]\nI walked alone\nNote: nobody saw\n", encoding="utf-8")

    meta = read_song_metadata(audio)

    assert meta.lyrics == "[Verse]\nI walked alone\nNote: nobody saw"
    assert meta.caption == "ballad" and meta.warnings == [] and not meta.is_instrumental
    assert meta.source == "ballad.txt + file name"


def test_empty_values_count_as_missing(tmp_path: Path) -> None:
    audio = song(tmp_path)
    (tmp_path / "song.txt").write_text("caption: ambient\nbpm:\nkey:   \nlyrics:\n\n", encoding="utf-8")
    meta = read_song_metadata(audio)
    assert meta.bpm is None and meta.keyscale == "" and meta.warnings == []
    assert meta.lyrics == INSTRUMENTAL and meta.is_instrumental


# --- caption / lyrics files and fallback -----------------------------------------------------


def test_caption_and_lyrics_files(tmp_path: Path) -> None:
    audio = song(tmp_path, "track 01.mp3")
    (tmp_path / "track 01.caption.txt").write_text("  upbeat j-pop, female vocals\n", encoding="utf-8")
    (tmp_path / "track 01.lyrics.txt").write_text("[Verse]\n君の声が   \n聞こえる\n\n", encoding="utf-8")

    meta = read_song_metadata(audio)

    assert meta.caption == "upbeat j-pop, female vocals"
    assert meta.lyrics == "[Verse]\n君の声が\n聞こえる" and not meta.is_instrumental
    assert meta.source == "track 01.caption.txt + track 01.lyrics.txt"


def test_caption_file_alone_means_instrumental(tmp_path: Path) -> None:
    audio = song(tmp_path)
    (tmp_path / "song.caption.txt").write_text("solo piano", encoding="utf-8")
    meta = read_song_metadata(audio)
    assert (meta.caption, meta.lyrics, meta.is_instrumental) == ("solo piano", INSTRUMENTAL, True)
    assert meta.source == "song.caption.txt"


def test_lyrics_file_alone_takes_the_caption_from_the_file_name(tmp_path: Path) -> None:
    audio = song(tmp_path, "night_drive-final mix.wav")
    (tmp_path / "night_drive-final mix.lyrics.txt").write_text("la la la", encoding="utf-8")
    meta = read_song_metadata(audio)
    assert (meta.caption, meta.lyrics) == ("night drive final mix", "la la la")
    assert meta.source == "night_drive-final mix.lyrics.txt + file name"


def test_fallback_without_any_sidecar(tmp_path: Path) -> None:
    audio = song(tmp_path, "Bjørk – été song.wav")
    meta = read_song_metadata(audio)
    assert meta == SongMetadata(caption="Bjørk – été song", lyrics=INSTRUMENTAL, is_instrumental=True, source="file name")
    assert caption_from_filename(Path("a/my__cool-song.v2.flac")) == "my cool song.v2"


def test_is_instrumental_replaces_lyrics(tmp_path: Path) -> None:
    audio = song(tmp_path)
    (tmp_path / "song.txt").write_text("caption: x\nis_instrumental: yes\nlyrics: hum hum\n", encoding="utf-8")
    meta = read_song_metadata(audio)
    assert meta.lyrics == INSTRUMENTAL and meta.is_instrumental


# --- text encodings --------------------------------------------------------------------------


def test_utf8_bom_utf16_and_cp1252_sidecars(tmp_path: Path) -> None:
    bom = song(tmp_path, "bom.wav")
    (tmp_path / "bom.txt").write_bytes("caption: café jazz\nlyrics: Ça va\n".encode("utf-8-sig"))
    wide = song(tmp_path, "wide.wav")
    (tmp_path / "wide.txt").write_text("caption: Ελληνικά\r\nbpm: 100\r\n", encoding="utf-16")
    legacy = song(tmp_path, "legacy.wav")
    (tmp_path / "legacy.caption.txt").write_bytes("chanson française".encode("cp1252"))

    assert (read_song_metadata(bom).caption, read_song_metadata(bom).lyrics) == ("café jazz", "Ça va")
    assert read_song_metadata(bom).warnings == []
    assert (read_song_metadata(wide).caption, read_song_metadata(wide).bpm) == ("Ελληνικά", 100)
    meta = read_song_metadata(legacy)
    assert meta.caption == "chanson française"
    assert meta.warnings == ["legacy.caption.txt: not UTF-8, read as Windows-1252; save it as UTF-8 if characters look wrong"]


def test_undecodable_sidecar_is_ignored_with_a_warning(tmp_path: Path) -> None:
    audio = song(tmp_path, "odd.wav")
    (tmp_path / "odd.txt").write_bytes(b"caption: \x81\x8d\x8f\x90\xff\xfe")
    meta = read_song_metadata(audio)
    assert meta.caption == "odd" and meta.source == "file name"
    assert meta.warnings == ["odd.txt: not UTF-8, UTF-16 or Windows-1252 text; ignored"]


# --- dataset JSON ----------------------------------------------------------------------------


def test_side_step_dataset_json_with_absolute_paths_and_defaults(tmp_path: Path) -> None:
    audio = song(tmp_path, "a.wav")
    other = song(tmp_path, "b.wav")
    dataset_json(
        tmp_path,
        [
            {"audio_path": str(audio), "filename": "a.wav", "caption": "epic orchestral", "lyrics": "",
             "bpm": 140, "keyscale": "D minor", "timesignature": "", "duration": 61.2,
             "is_instrumental": True, "custom_tag": "", "prompt_override": None},
        ],
        {"name": "set", "custom_tag": "orchx", "tag_position": "append", "genre": "orchestral", "genre_ratio": 0},
    )
    data = load_dataset_json(tmp_path)
    assert data is not None and data.path == tmp_path / "dataset.json"

    meta = read_song_metadata(audio, data)
    assert meta == SongMetadata(
        caption="epic orchestral, orchx", lyrics=INSTRUMENTAL, bpm=140, keyscale="D minor",
        custom_tag="orchx", genre="orchestral", is_instrumental=True, duration=61.2, source="dataset.json",
    )
    unmatched = read_song_metadata(other, data)  # only the dataset-wide defaults apply
    assert (unmatched.caption, unmatched.genre, unmatched.source) == ("b, orchx", "orchestral", "dataset.json + file name")


def test_json_matching_by_relative_path_and_by_file_name(tmp_path: Path) -> None:
    in_sub = song(tmp_path, "album one/01 intro.wav")
    by_root = song(tmp_path, "album two/02 song.flac")
    by_name = song(tmp_path, "loose/03 outro.ogg")
    windows = song(tmp_path, "loose/04 bonus.wav")
    twice = song(tmp_path, "loose/05 dup.wav")
    dataset_json(
        tmp_path / "album one",
        [
            {"audio_path": "01 intro.wav", "caption": "relative to the JSON"},
            {"audio_path": "album two/02 song.flac", "caption": "relative to the dataset folder"},
            {"filename": "03 outro.ogg", "caption": "by name"},
            {"audio_path": "C:\\Users\\me\\Music\\04 bonus.wav", "caption": "windows path, matched by name"},
            {"audio_path": "/elsewhere/x/05 dup.wav", "caption": "first"},
            {"audio_path": "/elsewhere/y/05 dup.wav", "caption": "second"},
        ],
        name="songs.json",
    )
    data = load_dataset_json(tmp_path)
    assert data is not None and data.path.name == "songs.json"

    assert read_song_metadata(in_sub, data).caption == "relative to the JSON"
    assert read_song_metadata(by_root, data).caption == "relative to the dataset folder"
    assert read_song_metadata(by_name, data).caption == "by name"
    assert read_song_metadata(windows, data).caption == "windows path, matched by name"
    ambiguous = read_song_metadata(twice, data)
    assert ambiguous.caption == "05 dup" and ambiguous.source == "file name"
    assert ambiguous.warnings == [
        "songs.json: samples[4], samples[5] all name '05 dup.wav'; none used (give their audio_path)"
    ]


def test_json_value_problems_are_warned_per_sample(tmp_path: Path) -> None:
    audio = song(tmp_path, "a.wav")
    dataset_json(tmp_path, [
        {"filename": "zzz.wav", "caption": "other"},
        {"filename": "a.wav", "caption": "x", "bpm": "fast", "is_instrumental": "maybe", "duration": True,
         "timesignature": 3, "language": ["en"], "tempo": 99.6},
    ])
    meta = read_song_metadata(audio, load_dataset_json(tmp_path))
    assert meta.warnings == [
        "dataset.json: samples[1]: bpm 'fast' is not a number; ignored",
        "dataset.json: samples[1]: is_instrumental 'maybe' is not true or false; ignored",
        "dataset.json: samples[1]: duration True is not a number; ignored",
        "dataset.json: samples[1]: language ['en'] is not text; ignored",
    ]
    assert (meta.bpm, meta.timesignature, meta.language) == (100, "3", "")


def test_precedence_song_txt_then_files_then_json_then_defaults(tmp_path: Path) -> None:
    audio = song(tmp_path, "mix.wav")
    (tmp_path / "mix.txt").write_text("caption: from song.txt\nbpm: 120\n", encoding="utf-8")
    (tmp_path / "mix.caption.txt").write_text("from caption file", encoding="utf-8")
    (tmp_path / "mix.lyrics.txt").write_text("from lyrics file", encoding="utf-8")
    dataset_json(
        tmp_path,
        [{"filename": "mix.wav", "caption": "from json", "lyrics": "json lyrics", "bpm": 80,
          "keyscale": "E major", "language": "ja"}],
        {"genre": "default genre", "language": "en"},
    )

    meta = read_song_metadata(audio, load_dataset_json(tmp_path))

    assert (meta.caption, meta.lyrics, meta.bpm) == ("from song.txt", "from lyrics file", 120)
    assert (meta.keyscale, meta.language, meta.genre) == ("E major", "ja", "default genre")
    assert meta.source == "mix.txt + mix.lyrics.txt + dataset.json"


# --- tags ------------------------------------------------------------------------------------


def test_apply_tag_positions() -> None:
    assert apply_tag("upbeat synthwave", "mytag") == "mytag, upbeat synthwave"
    assert apply_tag("upbeat synthwave", "mytag", "append") == "upbeat synthwave, mytag"
    assert apply_tag("upbeat synthwave", "mytag", "replace") == "mytag"
    assert apply_tag("upbeat synthwave", "  ", "replace") == "upbeat synthwave"
    assert apply_tag("", "mytag", "append") == "mytag"
    assert apply_tag("MyTag, upbeat synthwave", "mytag") == "MyTag, upbeat synthwave"  # not added twice


def test_tag_sources_and_positions(tmp_path: Path) -> None:
    plain = song(tmp_path, "plain.wav")
    tagged = song(tmp_path, "tagged.wav")
    (tmp_path / "tagged.txt").write_text("caption: piano\ncustom_tag: own\n", encoding="utf-8")
    (tmp_path / "plain.caption.txt").write_text("guitar", encoding="utf-8")

    assert read_song_metadata(plain, custom_tag="cli").caption == "cli, guitar"
    assert read_song_metadata(plain, tag_position="append", custom_tag="cli").caption == "guitar, cli"
    assert read_song_metadata(tagged, custom_tag="cli").caption == "own, piano"  # per-song tag wins
    assert read_song_metadata(tagged, tag_position="replace").caption == "own"

    dataset_json(tmp_path, [], {"custom_tag": "jsontag", "tag_position": "append"})
    data = load_dataset_json(tmp_path)
    assert read_song_metadata(plain, data).caption == "guitar, jsontag"
    assert read_song_metadata(plain, data, custom_tag="cli").caption == "guitar, cli"
    assert read_song_metadata(plain, data, tag_position="prepend").caption == "jsontag, guitar"
    with pytest.raises(DatasetError, match="tag_position 'middle'"):
        read_song_metadata(plain, data, tag_position="middle")  # type: ignore[arg-type]


# --- loading the dataset JSON ----------------------------------------------------------------


def test_load_dataset_json_none_and_unrelated_json_files(tmp_path: Path) -> None:
    assert load_dataset_json(tmp_path) is None
    (tmp_path / "config.json").write_text('{"sample_rate": 48000}', encoding="utf-8")
    (tmp_path / "notes.json").write_text("{not json at all", encoding="utf-8")
    (tmp_path / "list.json").write_text('[{"samples": 1}]', encoding="utf-8")
    assert load_dataset_json(tmp_path) is None


def test_top_level_dataset_json_wins_over_other_candidates(tmp_path: Path) -> None:
    dataset_json(tmp_path, [{"filename": "a.wav"}])
    dataset_json(tmp_path / "old", [{"filename": "b.wav"}])
    data = load_dataset_json(tmp_path)
    assert data is not None and data.path == tmp_path / "dataset.json"


def test_several_candidate_jsons_are_an_error(tmp_path: Path) -> None:
    dataset_json(tmp_path / "x", [{"filename": "a.wav"}])
    dataset_json(tmp_path / "y", [{"filename": "b.wav"}], name="more.json")
    with pytest.raises(DatasetError, match=r"several dataset JSON files \(x/dataset.json, y/more.json\)"):
        load_dataset_json(tmp_path)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("dataset.json", '{"samples": [\n  {"filename": "a.wav",}\n]}', r"dataset\.json: invalid JSON at line 2, column 24"),
        ("mine.json", '{\n"samples": [1 2]}', r"mine\.json: invalid JSON at line 2, column 15"),
        ("dataset.json", '{"metadata": {}}', r"dataset\.json: has no top-level \"samples\" list"),
        ("dataset.json", '{"samples": {"a.wav": {}}}', r"\"samples\" must be a list"),
        ("dataset.json", '{"samples": [], "metadata": [1]}', r"\"metadata\" must be an object"),
        ("dataset.json", '{"samples": [{"filename": "a.wav"}, {"caption": "x"}]}', r"samples\[1\] is not an object"),
        ("dataset.json", '{"samples": ["a.wav"]}', r"samples\[0\] is not an object"),
        ("dataset.json", '{"samples": [], "metadata": {"tag_position": "up"}}', r"metadata: tag_position 'up'"),
        ("dataset.json", b'{"samples": ["\xff"]}', r"cannot be read as UTF-8"),
    ],
)
def test_malformed_dataset_json_names_file_and_position(tmp_path: Path, name: str, text: str | bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    with pytest.raises(DatasetError, match=message) as info:
        load_dataset_json(tmp_path)
    assert str(path) in str(info.value) and isinstance(info.value, SideStepError)


def test_load_dataset_json_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="nowhere"):
        load_dataset_json(tmp_path / "nowhere")
