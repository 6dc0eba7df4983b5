"""Checkpoint discovery, variant classification, name lookup, shared parts and silence-latent loading."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sidestep.model_folders import (
    describe_models,
    filter_models,
    find_model,
    find_shared_parts,
    load_entry,
    load_silence_latent,
    resolve_base,
    scan_models,
)
from sidestep.errors import CheckpointError, ConfigError, UnknownBaseModelError

FIXTURES = Path(__file__).parent / "fixtures" / "ace15"
QWEN_CONFIG = {"architectures": ["Qwen3Model"], "model_type": "qwen3", "hidden_size": 1024}
LM_CONFIG = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 2048}
VAE_CONFIG = {"_class_name": "AutoencoderOobleck", "sampling_rate": 48000}


def ace_config(variant: str = "turbo", drop: tuple[str, ...] = (), **changes: object) -> dict:
    """A fixture config.json dict with some fields changed or removed."""
    data = json.loads((FIXTURES / variant / "config.json").read_text(encoding="utf-8"))
    data.update(changes)
    for key in drop:
        data.pop(key)
    return data


def write_folder(root: Path, name: str, config: dict | None) -> Path:
    """Create root/name, with a config.json when `config` is given."""
    folder = root / name
    folder.mkdir(parents=True)
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def save_latent(path: Path, frames: int) -> torch.Tensor:
    """Write a random silence latent in the on-disk layout [1, 64, frames] and return it."""
    latent = torch.randn(1, 64, frames)
    torch.save(latent, path)
    return latent


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A checkpoint root laid out like the official one, plus custom models and folders that are not models."""
    root = tmp_path / "checkpoints"
    write_folder(root, "Zed-tune", ace_config("base", drop=("model_version",)))
    xl_config = ace_config("turbo", encoder_hidden_size=32, encoder_intermediate_size=64)
    write_folder(root, "acestep-v15-xl-turbo", xl_config)
    write_folder(root, "my-finetune", ace_config("turbo", drop=("model_version",)))
    write_folder(root, "mystery", ace_config("turbo", drop=("model_version", "is_turbo")))
    write_folder(root, "acestep-v15-sft", ace_config("base", model_version="sft"))
    write_folder(root, "acestep-v15-base", ace_config("base"))
    write_folder(root, "acestep-v15-turbo-shift3", ace_config("turbo"))
    save_latent(write_folder(root, "acestep-v15-turbo", ace_config("turbo")) / "silence_latent.pt", 12)
    write_folder(root, "vae", VAE_CONFIG)
    write_folder(root, "Qwen3-Embedding-0.6B", QWEN_CONFIG)
    for size in ("0.6B", "1.7B", "4B"):
        write_folder(root, f"acestep-5Hz-lm-{size}", LM_CONFIG)
    write_folder(root, "some-llm", {"architectures": ["LlamaForCausalLM"], "model_type": "llama"})
    write_folder(root, "notes", None)
    (root / "README.txt").write_text("not a folder", encoding="utf-8")
    return root


# --- discovery and classification -------------------------------------------------------------------------------------


def test_scan_lists_models_official_first_in_variant_order_then_customs(root: Path) -> None:
    names = [entry.name for entry in scan_models(root)]
    assert names == [
        "acestep-v15-turbo",
        "acestep-v15-turbo-shift3",
        "acestep-v15-base",
        "acestep-v15-sft",
        "acestep-v15-xl-turbo",
        "my-finetune",
        "mystery",
        "Zed-tune",
    ]


def test_scan_reads_variant_base_and_schedule_fields(root: Path) -> None:
    entries = {entry.name: entry for entry in scan_models(root)}
    facts = {
        name: (e.official, e.variant, e.base, e.is_xl, e.is_turbo) for name, e in entries.items()
    }
    assert facts == {
        "acestep-v15-turbo": (True, "turbo", "turbo", False, True),
        "acestep-v15-turbo-shift3": (True, "turbo", "turbo", False, True),
        "acestep-v15-base": (True, "base", "base", False, False),
        "acestep-v15-sft": (True, "sft", "sft", False, False),
        "acestep-v15-xl-turbo": (True, "xl-turbo", "turbo", True, True),
        "my-finetune": (False, None, "turbo", False, True),
        "mystery": (False, None, None, False, None),
        "Zed-tune": (False, None, "base", False, False),
    }
    base = entries["acestep-v15-base"]
    assert (base.timestep_mu, base.timestep_sigma) == (-0.4, 1.0)
    assert base.path == root / "acestep-v15-base"
    assert base.config.hidden_size == 64 and base.config.model_version == "base"


def test_custom_schedule_fields_come_from_its_config(tmp_path: Path) -> None:
    folder = write_folder(tmp_path, "shifted", ace_config("base", timestep_mu=0.25, timestep_sigma=0.5))
    entry = load_entry(folder)
    assert (entry.timestep_mu, entry.timestep_sigma) == (0.25, 0.5)


def test_labels_say_official_variant_or_custom_base(root: Path) -> None:
    labels = [entry.label for entry in scan_models(root)]
    assert "acestep-v15-turbo  [official turbo]" in labels
    assert "acestep-v15-xl-turbo  [official xl-turbo]" in labels
    assert "my-finetune  [custom, base: turbo]" in labels
    assert "mystery  [custom, base unknown]" in labels


@pytest.mark.parametrize(
    ("changes", "drop", "expected"),
    [
        ({"is_turbo": True, "model_version": "turbo"}, (), "turbo"),
        ({"is_turbo": False, "model_version": "sft"}, (), "sft"),
        ({"is_turbo": False}, ("model_version",), "base"),
        ({"model_version": "xl_sft"}, ("is_turbo",), "sft"),
        ({"model_version": "whatever"}, ("is_turbo",), None),
        ({"is_turbo": True, "model_version": "base"}, (), None),
    ],
)
def test_custom_base_comes_from_is_turbo_and_model_version(
    tmp_path: Path, changes: dict, drop: tuple[str, ...], expected: str | None
) -> None:
    entry = load_entry(write_folder(tmp_path, "custom", ace_config("base", drop=drop, **changes)))
    assert not entry.official
    assert entry.base == expected


def test_official_suffixes_are_tolerated_but_other_names_are_custom(tmp_path: Path) -> None:
    for name in ("acestep-v15-turbo-rl", "acestep-v15-turbo-shift1", "acestep-v15-turbo-continuous"):
        entry = load_entry(write_folder(tmp_path, name, ace_config("turbo")))
        assert (entry.official, entry.variant) == (True, "turbo"), name
    entry = load_entry(write_folder(tmp_path, "acestep-v15-turbo-my-tune", ace_config("turbo")))
    assert (entry.official, entry.base) == (False, "turbo")


def test_official_name_with_contradicting_config_is_a_custom_model(tmp_path: Path) -> None:
    entry = load_entry(write_folder(tmp_path, "acestep-v15-base", ace_config("turbo")))
    assert (entry.official, entry.variant, entry.base) == (False, None, "turbo")
    assert entry.label == "acestep-v15-base  [custom, base: turbo]"


def test_custom_xl_is_told_by_its_narrower_condition_encoder(tmp_path: Path) -> None:
    entry = load_entry(write_folder(tmp_path, "big-tune", ace_config("base", encoder_hidden_size=32)))
    assert entry.is_xl and not entry.official and entry.base == "base"


# --- base resolution --------------------------------------------------------------------------------------------------


def test_resolve_base_uses_detected_family_or_the_named_one(root: Path) -> None:
    entries = {entry.name: entry for entry in scan_models(root)}
    assert resolve_base(entries["acestep-v15-xl-turbo"]) == "turbo"
    assert resolve_base(entries["acestep-v15-sft"]) == "sft"
    assert resolve_base(entries["Zed-tune"]) == "base"
    assert resolve_base(entries["mystery"], base=" SFT ") == "sft"
    assert resolve_base(entries["acestep-v15-xl-turbo"], base="turbo") == "turbo"


def test_resolve_base_refuses_unknown_base_and_tells_how_to_name_it(root: Path) -> None:
    mystery = find_model(root, "mystery")
    with pytest.raises(UnknownBaseModelError, match=r"mystery.*--base-model turbo\|base\|sft"):
        resolve_base(mystery)
    with pytest.raises(UnknownBaseModelError, match=r"'large' is not a base model.*turbo, base, sft"):
        resolve_base(mystery, base="large")


# --- lookup by name ---------------------------------------------------------------------------------------------------


def test_find_model_exact_case_insensitive_and_unique_substring(root: Path) -> None:
    assert find_model(root, "acestep-v15-turbo").name == "acestep-v15-turbo"
    assert find_model(root, "ACESTEP-V15-TURBO").name == "acestep-v15-turbo"
    assert find_model(root, "FineTune").name == "my-finetune"
    assert find_model(root, "shift3").name == "acestep-v15-turbo-shift3"


def test_find_model_refuses_ambiguous_name_and_lists_matches(root: Path) -> None:
    with pytest.raises(CheckpointError, match="several folders") as info:
        find_model(root, "turbo")
    message = str(info.value)
    assert "acestep-v15-turbo," in message and "acestep-v15-xl-turbo" in message and "mystery" not in message


def test_find_model_typo_is_an_error_naming_folders_and_closest_match(root: Path) -> None:
    with pytest.raises(CheckpointError, match="Did you mean 'my-finetune'") as info:
        find_model(root, "my-fintune")
    assert "acestep-v15-base" in str(info.value) and str(root) in str(info.value)


def test_missing_official_variant_is_never_swapped_for_a_look_alike(root: Path) -> None:
    (root / "acestep-v15-turbo").rename(root / "acestep-v15-turbo-old")
    with pytest.raises(CheckpointError, match="No model folder named 'acestep-v15-turbo'") as info:
        find_model(root, "acestep-v15-turbo")
    assert "acestep-v15-turbo-shift3" in str(info.value) and "acestep-v15-turbo-old" in str(info.value)
    assert "Did you mean" in str(info.value)


def test_missing_xl_variant_names_existing_folders(root: Path) -> None:
    with pytest.raises(CheckpointError, match="No model folder named 'acestep-v15-xl-sft'.*Did you mean") as info:
        find_model(root, "acestep-v15-xl-sft")
    assert "acestep-v15-sft" in str(info.value)


def test_naming_a_folder_that_is_not_ace_step_explains_why(root: Path) -> None:
    with pytest.raises(ConfigError, match=r"some-llm.*not an ACE-Step 1.5 model config.*llama"):
        find_model(root, "some-llm")
    with pytest.raises(ConfigError, match="acestep-5Hz-lm-1.7B.*not an ACE-Step 1.5"):
        find_model(root, "acestep-5Hz-lm-1.7B")
    with pytest.raises(CheckpointError, match=r"notes has no config.json"):
        find_model(root, "notes")


def test_filter_models_substring_then_close_matches(root: Path) -> None:
    entries = scan_models(root)
    assert [e.name for e in filter_models(entries, "XL")] == ["acestep-v15-xl-turbo"]
    assert [e.name for e in filter_models(entries, "mysterie")] == ["mystery"]
    assert filter_models(entries, "") == entries
    assert filter_models(entries, "qqqqqq") == []


# --- checkpoint root errors -------------------------------------------------------------------------------------------


def test_missing_root_names_path_and_expected_contents(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(CheckpointError, match=r"nowhere does not exist.*contains acestep-v15-turbo"):
        scan_models(missing)
    with pytest.raises(CheckpointError, match="does not exist"):
        find_model(missing, "acestep-v15-turbo")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x", encoding="utf-8")
    with pytest.raises(CheckpointError, match="file.txt is a file, not a folder"):
        scan_models(a_file)


def test_root_without_models_lists_what_it_found(tmp_path: Path) -> None:
    write_folder(tmp_path, "vae", VAE_CONFIG)
    write_folder(tmp_path, "acestep-5Hz-lm-0.6B", LM_CONFIG)
    with pytest.raises(CheckpointError, match=r"No ACE-Step 1.5 model folder in .*found: acestep-5Hz-lm-0.6B, vae"):
        scan_models(tmp_path)
    with pytest.raises(CheckpointError, match="No ACE-Step 1.5 model folder"):
        find_model(tmp_path, "acestep-v15-turbo")


def test_model_folder_passed_as_root_points_at_its_parent(root: Path) -> None:
    with pytest.raises(CheckpointError, match=rf"single model folder.*parent folder {re.escape(str(root))}"):
        scan_models(root / "acestep-v15-turbo")


# --- shared parts -----------------------------------------------------------------------------------------------------


def test_shared_parts_prefer_model_folder_silence_latent(root: Path) -> None:
    save_latent(root / "silence_latent.pt", 5)
    parts = find_shared_parts(root, find_model(root, "acestep-v15-turbo"))
    assert parts.vae_path == root / "vae"
    assert parts.text_encoder_path == root / "Qwen3-Embedding-0.6B"
    assert parts.silence_latent_path == root / "acestep-v15-turbo" / "silence_latent.pt"
    other = find_shared_parts(root, find_model(root, "my-finetune"))
    assert other.silence_latent_path == root / "silence_latent.pt"


def test_shared_parts_accept_safetensors_silence_latent(root: Path) -> None:
    entry = find_model(root, "acestep-v15-base")
    save_file({"silence_latent": torch.zeros(1, 64, 3)}, str(entry.path / "silence_latent.safetensors"))
    assert find_shared_parts(root, entry).silence_latent_path == entry.path / "silence_latent.safetensors"


def test_text_encoder_prefers_0_6b_and_accepts_other_sizes(root: Path) -> None:
    entry = find_model(root, "acestep-v15-turbo")
    write_folder(root, "Qwen3-Embedding-4B", QWEN_CONFIG)
    assert find_shared_parts(root, entry).text_encoder_path.name == "Qwen3-Embedding-0.6B"
    (root / "Qwen3-Embedding-0.6B" / "config.json").unlink()
    assert find_shared_parts(root, entry).text_encoder_path.name == "Qwen3-Embedding-4B"


def test_missing_vae_says_where_it_looked(root: Path) -> None:
    entry = find_model(root, "acestep-v15-turbo")
    (root / "vae" / "config.json").unlink()
    with pytest.raises(CheckpointError, match=rf"No VAE.*folder 'vae'.*{re.escape(str(root / 'vae'))}"):
        find_shared_parts(root, entry)


def test_missing_text_encoder_names_expected_folder(root: Path) -> None:
    entry = find_model(root, "acestep-v15-turbo")
    (root / "Qwen3-Embedding-0.6B").rename(root / "text-encoder")
    expected = rf"No text encoder found in {re.escape(str(root))}.*'Qwen3-Embedding-0.6B'"
    with pytest.raises(CheckpointError, match=expected):
        find_shared_parts(root, entry)


def test_missing_silence_latent_names_both_places(root: Path) -> None:
    entry = find_model(root, "my-finetune")
    where = re.escape(f"silence_latent.pt or silence_latent.safetensors in {entry.path} and {root}")
    with pytest.raises(CheckpointError, match=where):
        find_shared_parts(root, entry)


# --- silence latent ---------------------------------------------------------------------------------------------------


def test_silence_latent_pt_is_returned_time_major(tmp_path: Path) -> None:
    stored = save_latent(tmp_path / "silence_latent.pt", 7)
    latent = load_silence_latent(tmp_path / "silence_latent.pt")
    assert latent.shape == (1, 7, 64)
    assert torch.equal(latent, stored.transpose(1, 2))


def test_golden_fixture_silence_latent_loads_as_1_t_64() -> None:
    path = FIXTURES / "turbo" / "silence_latent.safetensors"
    latent = load_silence_latent(path)
    assert latent.shape == (1, 1000, 64)
    assert torch.equal(latent, load_file(str(path))["silence_latent"].transpose(1, 2))


class _Payload:
    """Pickles to a call that writes a marker file: code a weights_only load must never run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def test_pickled_code_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "marker.txt"
    path = tmp_path / "silence_latent.pt"
    torch.save({"silence_latent": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match=rf"Cannot read the silence latent {re.escape(str(path))}"):
        load_silence_latent(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # proves the file really carries code: an unsafe load runs it
    assert marker.read_text() == "ran"


def test_pickled_function_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "silence_latent.pt"
    torch.save({"hook": describe_models}, path)
    with pytest.raises(CheckpointError, match="Cannot read the silence latent"):
        load_silence_latent(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"silence_latent": torch.zeros(1, 64, 4)}, "holds a dict, not a tensor"),
        (torch.zeros(1, 4, 64), r"shape \[1, 4, 64\]; a silence latent is \[1, 64, T\]"),
        (torch.zeros(64, 4), r"shape \[64, 4\]"),
        (torch.zeros(1, 64, 4, dtype=torch.int64), "torch.int64 values"),
    ],
)
def test_wrong_silence_latent_content_names_the_file(tmp_path: Path, content: object, message: str) -> None:
    path = tmp_path / "silence_latent.pt"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match=message) as info:
        load_silence_latent(path)
    assert str(path) in str(info.value)


def test_broken_silence_latent_files_name_the_file(tmp_path: Path) -> None:
    garbage = tmp_path / "silence_latent.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match=rf"Cannot read the silence latent {re.escape(str(garbage))}"):
        load_silence_latent(garbage)
    wrong_key = tmp_path / "silence_latent.safetensors"
    save_file({"latent": torch.zeros(1, 64, 2)}, str(wrong_key))
    expected = rf"{re.escape(str(wrong_key))} has no 'silence_latent' tensor \(found: latent\)"
    with pytest.raises(CheckpointError, match=expected):
        load_silence_latent(wrong_key)
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(wrong_key.read_bytes()[:20])
    with pytest.raises(CheckpointError, match=rf"Cannot read the silence latent {re.escape(str(truncated))}"):
        load_silence_latent(truncated)
    with pytest.raises(CheckpointError, match="Cannot read the silence latent"):
        load_silence_latent(tmp_path / "absent.pt")


# --- table ------------------------------------------------------------------------------------------------------------


def test_describe_models_prints_aligned_table(root: Path) -> None:
    entries = scan_models(root)
    lines = describe_models(entries).splitlines()
    assert lines[0].split() == ["model", "--model-variant", "type", "path"]
    assert lines[1].split()[1] == "turbo"
    assert len(lines) == len(entries) + 1
    assert lines[1].startswith("acestep-v15-turbo ") and "[official turbo]" in lines[1]
    assert lines[1].endswith(str(root / "acestep-v15-turbo"))
    assert "[custom, base unknown]" in lines[-2]
    path_column = {line.index(str(root)) for line in lines[1:]}
    assert len(path_column) == 1
    assert describe_models([]) == "No ACE-Step 1.5 models."
