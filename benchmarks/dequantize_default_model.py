"""Save the embedded SmolLM2-135M-Instruct GGUF as a float32 safetensors directory with its tokenizer.

`transformers serve` 5.23 cannot preload a local GGUF file, but it preloads a model directory: this writes one, so
the peer serves the very weights tokserve serves (dequantized by transformers' own GGUF loader, as tokserve's are).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/dequantize_default_model.py /tmp/smollm2-135m-f32
"""

import argparse
import copy
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from tokserve.engine import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="where to write config, weights, tokenizer and chat template")
    args = parser.parse_args()
    loaded = load_model(None, "cpu", "float32")
    # The GGUF-loaded model keeps its GGUF quantizer and refuses save_pretrained; a plain model of the same config,
    # given the dequantized tensors, saves as any other.
    config = copy.deepcopy(loaded.model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.model.state_dict())
    plain.generation_config = loaded.model.generation_config
    plain.save_pretrained(args.directory)
    loaded.tokenizer.save_pretrained(args.directory)
    print(f"saved {config.model_type} ({plain.num_parameters():,} parameters) to {args.directory}")


if __name__ == "__main__":
    main()
