"""Memory options and the adaptive batch: applied where a pipeline has them, skipped with a reason where not,
and the images stay what they were (up to the rounding another batch size also gives)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from audit_helpers import HalfClassifier
from debias.generation.cache import ImageCache, item_key
from debias.core.errors import InputError
from debias.generation.generate import default_settings, generate_images, measure, work_items
from debias.core.memory import AdaptiveBatch, MemoryOptions, _keep_on_device, apply_memory_options, batch_size_for
from debias.core.models import find_cross_attention, fingerprint
from debias.core.profiles import get_profile
from tiny_models import BUILDERS, tiny_sd1

PROMPTS, SEEDS = ["a photo of a nurse", "a doctor", "a photo of a nurse", "a doctor"], [0, 1, 2, 3]
SLICING = {"vae_tiling": MemoryOptions(vae_tiling=True), "vae_slicing": MemoryOptions(vae_slicing=True),
           "attention_slicing": MemoryOptions(attention_slicing=True)}


def _images(pipe, size: int = 16) -> np.ndarray:
    settings = default_settings(pipe, get_profile("default").sampler, steps=2, height=size, width=size)
    return generate_images(pipe, PROMPTS, SEEDS, settings)


def _levels_apart(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


@pytest.fixture(scope="module")
def baselines() -> dict[str, np.ndarray]:
    return {name: _images(build()) for name, build in BUILDERS.items()}


def test_options_are_checked_with_the_choices() -> None:
    with pytest.raises(InputError, match="none, model, sequential"):
        MemoryOptions(cpu_offload="gpu")
    assert MemoryOptions().to_dict() == {"cpu_offload": "none", "vae_tiling": False, "vae_slicing": False,
                                         "attention_slicing": False, "adapt_batch": False}
    assert apply_memory_options(tiny_sd1(), MemoryOptions(), say=pytest.fail) == []


@pytest.mark.parametrize("family", list(BUILDERS))
@pytest.mark.parametrize("option", list(SLICING))
def test_slicing_and_tiling_apply_where_supported_and_keep_the_images(baselines, family: str, option: str) -> None:
    pipe, notes = BUILDERS[family](), []
    applied = apply_memory_options(pipe, SLICING[option], say=notes.append)
    if family == "pixart" and option == "attention_slicing":
        assert applied == [] and "PixArtTransformer2DModel has no sliced attention" in notes[0]
    else:
        assert len(applied) == 1 and applied[0].startswith(option) and notes == []
    # sliced attention sums in another order: at most the one level another batch size also moves
    assert _levels_apart(_images(pipe), baselines[family]) <= 1


def test_model_offload_keeps_images_fingerprint_and_edits(baselines, tmp_path: Path) -> None:
    from debias.editing import bake_edit, revert_edit

    pipe, reference = tiny_sd1(), tiny_sd1()
    applied = apply_memory_options(pipe, MemoryOptions(cpu_offload="model"), device="cpu", say=pytest.fail)
    assert applied == ["cpu_offload=model onto cpu (no memory saved: the execution device is the CPU)"]
    assert np.array_equal(_images(pipe), baselines["sd1"])
    assert fingerprint(pipe) == fingerprint(reference)
    M = torch.eye(32) + 0.05 * torch.randn(32, 32, generator=torch.Generator().manual_seed(0))
    bake_edit(pipe, M)
    bake_edit(reference, M)
    assert np.array_equal(_images(pipe), _images(reference))  # the edit reaches the offloaded weights
    revert_edit(pipe)
    assert np.array_equal(_images(pipe), baselines["sd1"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU, offload has somewhere to go")
def test_offload_without_an_accelerator_is_skipped_with_the_reason(baselines) -> None:
    for mode in ("model", "sequential"):
        pipe, notes = tiny_sd1(), []
        assert apply_memory_options(pipe, MemoryOptions(cpu_offload=mode), say=notes.append) == []
        assert notes == [f"cpu_offload={mode} skipped: no accelerator to offload to: on the CPU the weights are in "
                         "CPU memory already (offload saves GPU memory; on a CPU lower --batch-size or the image "
                         "size instead)"]
        assert np.array_equal(_images(pipe), baselines["sd1"])
    notes = []
    assert apply_memory_options(tiny_sd1(), MemoryOptions(cpu_offload="sequential"), device="cpu",
                                say=notes.append) == []
    assert "sequential offload needs an accelerator" in notes[0]


def test_sequentially_offloaded_kv_weights_stay_readable_and_writable() -> None:
    """Sequential offload leaves "meta" tensors in the modules; the K/V projections debias reads and edits are
    taken out of it (the forward pass needs a GPU: accelerate's hooks fail with the CPU as execution device)."""
    from debias.editing import bake_edit, revert_edit

    pipe, reference = tiny_sd1(), tiny_sd1()
    kv = [p.module for p in find_cross_attention(pipe)]
    pipe.enable_sequential_cpu_offload(device="cpu")
    assert kv[0].weight.device.type == "meta"
    _keep_on_device(kv, torch.device("cpu"))
    assert all(m.weight.device.type == "cpu" and not hasattr(m, "_hf_hook") for m in kv)
    assert fingerprint(pipe) == fingerprint(reference)
    bake_edit(pipe, 2 * torch.eye(32))
    assert torch.equal(kv[0].weight, 2 * find_cross_attention(reference)[0].module.weight)
    revert_edit(pipe)
    assert torch.equal(kv[0].weight, find_cross_attention(reference)[0].module.weight)


def test_vae_tiling_is_in_the_image_key_only_where_it_tiles() -> None:
    pipe = tiny_sd1()  # its VAE tiles images larger than 32 px
    sampler = get_profile("default").sampler
    plain = {size: default_settings(pipe, sampler, steps=2, height=size, width=size) for size in (16, 96)}
    apply_memory_options(pipe, MemoryOptions(vae_tiling=True), say=pytest.fail)
    tiled = {size: default_settings(pipe, sampler, steps=2, height=size, width=size) for size in (16, 96)}
    assert tiled[16] == plain[16] and "vae_tiling" not in tiled[16].to_dict()
    assert tiled[96].vae_tiling and tiled[96].to_dict()["vae_tiling"] is True
    assert item_key("m", None, tiled[96], "a", 0) != item_key("m", None, plain[96], "a", 0)
    untiled = generate_images(tiny_sd1(), PROMPTS[:1], SEEDS[:1], plain[96])
    assert _levels_apart(generate_images(pipe, PROMPTS[:1], SEEDS[:1], tiled[96]), untiled) > 1  # blended seams


# --------------------------------------------------------------------------------------- adaptive batch
class FakeMemory:
    """A stand-in for a CUDA device: each image costs ``per_image`` bytes at the peak, ``free`` bytes are free."""

    def __init__(self, per_image: int, free: int):
        self.per_image, self.free, self.images = per_image, free, 0

    def begin(self) -> None:
        pass

    def peak_since_begin(self) -> int:
        return self.per_image * self.images

    def available(self) -> int:
        return self.free


def test_batch_size_for_fits_the_free_memory_within_limits() -> None:
    assert batch_size_for(100, 10_000, 4) == 32  # 80 fit; capped at the limit
    assert batch_size_for(1_000, 10_000, 4) == 8  # 0.8 · 10 000 / 1 000
    assert batch_size_for(1_000, 2_000, 4) == 4  # never below what just ran
    assert batch_size_for(10, 10_000, 64) == 64  # nor below a larger size the user chose
    assert batch_size_for(0, 10_000, 4) == 4


def test_adaptive_batch_grows_once_then_only_halves() -> None:
    memory = FakeMemory(per_image=1_000, free=20_000)
    owner = type("Pipeline", (), {})()  # anything a weak reference can point at
    sizer = AdaptiveBatch(4, memory, pipe=owner, key="settings")
    sizer.begin()
    memory.images = 4
    sizer.done(4)
    assert sizer.size == 16 and sizer.memory is None
    sizer.done(16)
    assert sizer.size == 16
    sizer.halved(8)
    assert sizer.size == 8
    again = AdaptiveBatch(4, FakeMemory(per_image=0, free=40_000), pipe=owner, key="settings")
    assert again.size == 32 and again.memory is None  # the measured cost is remembered for the same settings
    assert AdaptiveBatch(4).size == 4 and AdaptiveBatch(4).memory is None


def test_measure_adapts_the_batch_and_still_halves_on_out_of_memory(tmp_path: Path, monkeypatch) -> None:
    import debias.generation.generate as generate

    pipe = tiny_sd1()
    settings = default_settings(pipe, get_profile("default").sampler, steps=2)
    calls: list[int] = []
    real = generate._generate

    def recording(pipe, prompts, seeds, settings, edit):
        if len(prompts) > 8:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        calls.append(len(prompts))
        return real(pipe, prompts, seeds, settings, edit)

    memory = FakeMemory(per_image=1_000, free=20_000)
    monkeypatch.setattr(generate, "_generate", recording)
    monkeypatch.setattr(AdaptiveBatch, "for_call", classmethod(lambda cls, size, p, s, adapt: cls(size, memory)))
    monkeypatch.setattr(FakeMemory, "peak_since_begin", lambda self: self.per_image * calls[-1])
    items = work_items(["a photo of a nurse"], 0, 30)
    results = measure(pipe, HalfClassifier(), items, settings=settings, cache=ImageCache(tmp_path), batch_size=4,
                      progress=False, adapt_batch=True)
    assert calls == [4, 8, 8, 8, 2]  # 4 measured → 16 planned → out of memory → 8 from then on
    assert len(results) == 30


def test_start_applies_the_memory_options_and_the_run_record_names_them() -> None:
    from debias.core.options import RuntimeOptions
    from debias.core.setup import start

    plain = start(tiny_sd1(), RuntimeOptions(threads=1)).model
    assert plain.memory == MemoryOptions() and "memory" not in plain.info()  # default records stay as they were

    options = MemoryOptions(vae_slicing=True, attention_slicing=True, adapt_batch=True)
    loaded = start(tiny_sd1(), RuntimeOptions(threads=1), options).model
    assert loaded.memory.adapt_batch and loaded.pipe.vae.use_slicing
    assert len(loaded.info()["memory"]) == 3 and any("adapts" in note for note in loaded.info()["memory"])
