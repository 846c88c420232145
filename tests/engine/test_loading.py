"""Loading options that fail clearly where they cannot work (--quantization without CUDA or bitsandbytes), and the
loaded model's forward on the installed transformers."""

import importlib.util
import inspect

import pytest
import torch
from transformers import DynamicCache

from tokserve.cli import main
from tokserve.config import Settings
from tokserve.engine import Engine, check_quantization, load_model
from tokserve.errors import StartupError


def test_the_kv_cache_goes_under_the_name_the_models_forward_takes(engine: Engine) -> None:
    """transformers 5.24 renamed forward's `past_key_values` to `cache`; the old name warns (an error here) and goes
    in 5.40, and older releases know only it."""
    loaded = engine.loaded
    assert loaded.cache_argument in inspect.signature(loaded.model.forward).parameters
    cache = DynamicCache(config=loaded.model.config)
    ids = torch.tensor([loaded.tokenizer.encode("The capital of France is")], device=loaded.device)
    with torch.inference_mode():
        logits = loaded.logits({"input_ids": ids}, cache, logits_to_keep=1)
    assert logits.shape[:2] == (1, 1)
    assert cache.get_seq_length() == ids.shape[1]  # the model filled our cache, not one of its own


@pytest.mark.parametrize("quantization", ["bnb-4bit", "bnb-8bit"])
def test_quantization_on_cpu_stops_the_start_with_a_clear_message(quantization: str) -> None:
    with pytest.raises(SystemExit, match=f"--quantization {quantization} needs a CUDA GPU .* runs on cpu"):
        main(["serve", "--quantization", quantization, "--device", "cpu"])


def test_quantization_on_cpu_fails_in_load_model_too() -> None:
    with pytest.raises(StartupError, match="needs a CUDA GPU"):
        load_model(None, device="cpu", quantization="bnb-4bit")


@pytest.mark.cuda
@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="the path without bitsandbytes")
def test_quantization_without_bitsandbytes_names_the_extra() -> None:
    with pytest.raises(
        StartupError, match=r"needs bitsandbytes, which is not installed: pip install 'tokserve\[quant\]'"
    ):
        check_quantization("bnb-4bit", "cuda")


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cuda:", "mps:0"])
def test_unknown_devices_are_refused(device: str) -> None:
    with pytest.raises(ValueError, match="is not auto, cpu, cuda or cuda:N"):
        Settings(device=device)
    assert Settings(device="cuda:1").device == "cuda:1"
