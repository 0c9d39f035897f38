"""looped-lm in Huginn's layout: a Huginn checkpoint loads, round-trips, and runs Huginn's forward."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from eqserve.models.base import InputError
from eqserve.models.looped_lm import checkpoint
from eqserve.models.looped_lm.config import LoopedConfig
from eqserve.models.looped_lm.model import LoopedTransformer
from tests.models.looped_reference import huginn_config, reference_logits, write_huginn


@pytest.fixture(scope="module")
def huginn(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    folder = tmp_path_factory.mktemp("huginn")
    return folder, write_huginn(folder)


def test_a_huginn_checkpoint_loads_every_tensor_by_its_name(huginn: tuple[Path, dict]) -> None:
    folder, tensors = huginn
    model = checkpoint.load(folder)
    state = model.state_dict()
    assert set(state) == set(tensors) - {"freqs_cis"} | {"lm_head.weight"}
    for name, t in tensors.items():
        if name != "freqs_cis":
            assert torch.equal(state[name], t), name
    assert model.lm_head.weight is model.transformer.wte.weight  # Huginn ties the head


def test_save_then_load_is_identical(huginn: tuple[Path, dict], tmp_path: Path) -> None:
    model = checkpoint.load(huginn[0])
    checkpoint.save(model, tmp_path / "m.safetensors")
    again = checkpoint.load(tmp_path / "m.safetensors")
    assert again.config == model.config
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ids = torch.tensor([[1, 4, 2, 0, 5]])
    with torch.no_grad():
        assert torch.equal(model(ids, 3)[0], again(ids, 3)[0])


@pytest.mark.parametrize("steps", [1, 4])
def test_forward_matches_huginns_equations(huginn: tuple[Path, dict], steps: int) -> None:
    folder, tensors = huginn
    model = checkpoint.load(folder)
    tokens = [3, 1, 4, 1, 5, 2, 0]
    with torch.no_grad():
        ours = model(torch.tensor([tokens]), steps)[0][0]
    ref = reference_logits(tensors, tokens, [steps] * len(tokens))
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(ours, reference_logits(tensors, tokens, [steps + 1] * len(tokens)), atol=1e-3)


def test_a_wrong_rotary_table_or_an_unknown_variant_is_refused(huginn: tuple, tmp_path: Path) -> None:
    tensors = dict(huginn[1])
    tensors["freqs_cis"] = tensors["freqs_cis"].flip(1)
    with pytest.raises(ValueError, match="freqs_cis"):
        checkpoint.build(LoopedConfig.from_dict(huginn_config()), tensors, tmp_path)
    with pytest.raises(ValueError, match="injection_type"):
        LoopedConfig.from_dict(huginn_config() | {"injection_type": "add"})
    with pytest.raises(ValueError, match="not understood"):
        LoopedConfig.from_dict(huginn_config() | {"n_experts": 8})


def test_encode_refuses_characters_outside_the_vocabulary() -> None:
    model = LoopedTransformer(LoopedConfig(chars="01=", vocab_size=4, block_size=16))
    assert model.decode(model.encode("0110=")) == "0110="
    for bad in ("01a=", "", "0" * 16):
        with pytest.raises(InputError) as info:
            model.encode(bad)
        assert info.value.field == "prompt"
