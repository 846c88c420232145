"""On a CUDA GPU: the engine's batched decoding against plain `model.generate`, same model, dtype and prompts.

GPU machines here cannot download weights and the embedded GGUF is too big to carry, so the model is SmolLM2-135M's
full-size config with random weights (greedy decoding with `ignore_eos` makes the token count fixed all the same).
`CONFIG_DIR` holds the embedded model's config and tokenizer (`save_pretrained` of both). Best of 3 after a warm-up.

    HF_HUB_OFFLINE=1 python benchmarks/gpu_engine_vs_generate.py CONFIG_DIR
"""

import asyncio
import sys
import tempfile
import time

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from tokserve.engine import Engine, EngineSettings, GenerationRequest, SamplingParams, TokenStream

NEW_TOKENS = 64


async def engine_rate(engine: Engine, prompts: list[tuple[int, ...]]) -> float:
    """Tokens/s of the engine generating for all prompts at once."""
    requests = [
        GenerationRequest(f"r{i}", prompt, NEW_TOKENS, SamplingParams(temperature=0.0), ignore_eos=True)
        for i, prompt in enumerate(prompts)
    ]
    start = time.perf_counter()

    async def count(stream: TokenStream) -> int:
        return sum([event.token_id is not None async for event in stream.events()])

    tokens = await asyncio.gather(*(count(stream) for stream in engine.submit_all(requests)))
    return sum(tokens) / (time.perf_counter() - start)


def generate_rate(engine: Engine, prompts: list[tuple[int, ...]]) -> float:
    """Tokens/s of `model.generate` on the same prompts, left-padded into one batch."""
    tokenizer, model = engine.loaded.tokenizer, engine.loaded.model
    tokenizer.padding_side = "left"
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    texts = [tokenizer.decode(prompt) for prompt in prompts]
    inputs = tokenizer(texts, return_tensors="pt", padding=True).to(engine.loaded.device)
    torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(**inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    torch.cuda.synchronize()
    return len(prompts) * NEW_TOKENS / (time.perf_counter() - start)


def main(config_dir: str) -> None:
    model_dir = tempfile.mkdtemp()
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(config_dir)).save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(config_dir).save_pretrained(model_dir)
    for dtype in ("bfloat16", "float32"):
        engine = Engine.load(EngineSettings(model=model_dir, device="cuda", dtype=dtype))
        text = "Prompt number {}: tell me a story about the sea and the stars. "
        prompts = [tuple(engine.encode_text(text.format(i) * 3)) for i in range(16)]
        for batch in (1, 8, 16):
            asyncio.run(engine_rate(engine, prompts[:batch]))
            generate_rate(engine, prompts[:batch])
            ours = max(asyncio.run(engine_rate(engine, prompts[:batch])) for _ in range(3))
            theirs = max(generate_rate(engine, prompts[:batch]) for _ in range(3))
            print(f"{dtype} batch {batch}: engine {ours:.0f} tok/s, generate {theirs:.0f} tok/s, {ours / theirs:.2f}x")
        engine.close()


if __name__ == "__main__":
    main(sys.argv[1])
