"""A workflow (Load → Encode Dataset → Train Adapter → Sample) reads each of the main model's weights from disk once:
later steps add the parts they lack to the DiT already in memory, and training runs on a private module tree over the
same tensors, so the shared DiT stays clean for sampling."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from sidestep.adapters.config import LoraConfig
from sidestep.adapters.files import load_adapter
from sidestep.bundle import AceStepBundle, StateDictSource, open_checkpoint
from sidestep.dataset.encode import encode_dataset
from sidestep.dataset.settings import EncodeConfig
from sidestep.generate import GenerationRequest, generate
from sidestep.model import PARTS, TRAINING_PARTS, AceStepConditionGenerationModel
from sidestep.model.weights import WeightIndex
from sidestep.training.config import TrainConfig
from sidestep.training.run import TrainingRun
from sidestep.variants import SAMPLE_RATE


@pytest.fixture
def dit_reads(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How often each DiT tensor is read from a weights file (the real reader runs; it is only counted)."""
    reads: Counter[str] = Counter()
    read = WeightIndex.read

    def counted(index: WeightIndex, names, dtype, device, *more):
        names = list(names)
        reads.update(names)
        return read(index, names, dtype, device, *more)

    monkeypatch.setattr(WeightIndex, "read", counted)
    return reads


def write_songs(folder: Path) -> Path:
    folder.mkdir()
    for index, frequency in enumerate((220.0, 440.0)):
        t = np.arange(int(1.2 * SAMPLE_RATE)) / SAMPLE_RATE
        tone = 0.3 * np.sin(2 * np.pi * frequency * t)
        soundfile.write(folder / f"song{index}.wav", np.stack([tone, tone], axis=1), SAMPLE_RATE)
    return folder


@pytest.mark.parametrize("train_parts", [TRAINING_PARTS, PARTS], ids=["training-parts", "with-previews"])
def test_encode_train_sample_reads_every_dit_weight_once(
    tiny_root: Path, tmp_path: Path, dit_reads: Counter[str], train_parts: tuple[str, ...]
) -> None:
    bundle = open_checkpoint(tiny_root, "acestep-v15-turbo")
    dataset = tmp_path / "dataset"
    with torch.inference_mode():  # ComfyUI runs every node in inference mode
        encode_dataset(bundle, EncodeConfig(str(write_songs(tmp_path / "songs")), str(dataset)))
    with torch.inference_mode(False):  # as Train Adapter does, so autograd can use the weights
        previews = 1 if train_parts == PARTS else 0
        config = TrainConfig(output_dir=str(tmp_path / "run"), epochs=1, max_latent_frames=None, preview_every=previews)
        trainer = TrainingRun(bundle, dataset, LoraConfig(rank=4, alpha=8), config).trainer()
        weight = lambda model: model.decoder.layers[0].self_attn.q_proj.weight  # noqa: E731
        shares_weights = weight(trainer.model).data_ptr() == weight(bundle.dit(train_parts)).data_ptr()
        result = trainer.run()
    adapter = load_adapter(result.adapter_dir)
    with torch.inference_mode():
        song = generate(bundle, GenerationRequest(caption="a test tone", duration=2.0), [(adapter, 1.0)], adapter.metadata)

    assert torch.isfinite(song.waveform).all()
    every_weight = set(AceStepConditionGenerationModel.on_meta_device(bundle.entry.config).state_dict())
    assert set(dit_reads) == every_weight
    assert {name: count for name, count in dit_reads.items() if count > 1} == {}
    shared = bundle.dit()
    assert set(shared.state_dict()) == every_weight  # no adapter tensors in the shared DiT
    assert not any("lora" in name for name, _ in shared.named_modules())
    assert shares_weights  # the private training DiT took no copy


def test_a_training_copy_of_weights_a_host_holds_shares_them_as_tensors_autograd_can_use(tiny_root: Path) -> None:
    """With ComfyUI's MODEL (weights created in inference mode), the private training DiT shares ComfyUI's memory
    through normal tensors: no second copy of the DiT, and autograd can save them for the backward pass."""
    files = open_checkpoint(tiny_root, "acestep-v15-turbo")
    with torch.inference_mode():
        host = {name: tensor.clone() for name, tensor in files.dit().state_dict().items()}
    bundle = AceStepBundle(entry=files.entry, base="turbo", source=StateDictSource(lambda: host, None, None, None))
    with torch.inference_mode():  # Encode Dataset, as ComfyUI runs it
        bundle.dit(("encoder",))
    private = bundle.with_own_dit(TRAINING_PARTS)

    name = "decoder.layers.0.self_attn.q_proj.weight"
    shared, own = bundle.dit(TRAINING_PARTS).state_dict()[name], private.dit(TRAINING_PARTS).state_dict()[name]
    assert shared.data_ptr() == own.data_ptr() == host[name].data_ptr()
    assert shared.is_inference() and not own.is_inference()
    features = torch.randn(2, own.shape[1], requires_grad=True)
    torch.nn.functional.linear(features, own).square().sum().backward()  # an inference weight would be refused here
    torch.testing.assert_close(features.grad, 2 * (features @ own.T) @ own)
