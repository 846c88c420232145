"""Loading options that fail clearly where they cannot work (--quantization without CUDA or bitsandbytes), and the
loaded model's forward on the installed transformers."""

import importlib.util

import pytest

from tokserve.cli import main
from tokserve.config import Settings
from tokserve.engine import check_quantization, load_model
from tokserve.errors import StartupError


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
