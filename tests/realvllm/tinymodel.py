"""A tiny random Llama, its tokenizer and LoRA adapters, made on disk at test time.

Runs INSIDE the real-vLLM env's python (it needs torch, transformers,
safetensors, tokenizers; the project venv has none of them), as
`VLLM_PYTHON tinymodel.py --out DIR [--adapter NAME:RANK ...]`; prints one JSON
object on stdout naming what it wrote. Nothing comes from a model hub. A model
already in DIR is loaded, not rebuilt, so more adapters can be added later.

Shapes follow what vLLM's CPU backend accepts: head_dim 32 (16 passes start-up,
then the first request kills the engine). The tokenizer is word-level with a
metaspace pre-tokenizer so that every token decodes to a whole word: streamed
deltas stay readable, unlike byte-level BPE on a random model.

Every adapter is checked here, with plain torch, to change greedy output versus
the base model and versus each other adapter, so a test that compares outputs
per adapter can fail only because of the server, never because of unlucky
random weights.
"""

from __future__ import annotations

import argparse
import json
import sys
import zlib
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

HIDDEN = 128
HEADS = 4
LAYERS = 2
INTERMEDIATE = 256
TARGETS = ("q_proj", "v_proj")
SPECIAL = ("<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>")
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "ta", "vo", "zi", "pe", "su", "do", "fa")
BASE_WORDS = ("hello", "world", "say", "something", "the", "a", "tell", "me", "story", "about",
              "cats", "dogs", "one", "two", "three", "yes", "no", "please", "thanks", "ok")
PROBE_PROMPT = "hello world tell me a story about cats"
PROBE_TOKENS = 12
DEFAULT_SERVED_NAME = "tiny-llama"
BASE = "<base>"


class AdapterIndistinct(RuntimeError):
    """An adapter's greedy output equals the base model's or another adapter's."""


def vocabulary() -> list[str]:
    """Special tokens, a few real words (for readable prompts), then made-up words."""
    made_up = [a + b for a in SYLLABLES for b in SYLLABLES] + [
        a + b + c for a in SYLLABLES[:6] for b in SYLLABLES for c in SYLLABLES[:6]]
    return [*SPECIAL, *BASE_WORDS, *made_up]


def build_tokenizer(out: Path) -> PreTrainedTokenizerFast:
    words = vocabulary()
    vocab = {w if w in SPECIAL else "\u2581" + w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="</s>",
                                   additional_special_tokens=list(SPECIAL[3:]))
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return fast


def build_model(out: Path, tokenizer: PreTrainedTokenizerFast, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, num_attention_heads=HEADS,
        num_key_value_heads=HEADS, num_hidden_layers=LAYERS, intermediate_size=INTERMEDIATE,
        max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False, initializer_range=0.2, torch_dtype="float32",
    )
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(out, safe_serialization=True)
    return model


def adapter_tensors(name: str, rank: int) -> dict[str, torch.Tensor]:
    """Random, non-zero A and B for q_proj and v_proj of every layer, seeded by the name."""
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    tensors = {}
    for layer in range(LAYERS):
        for target in TARGETS:
            key = f"base_model.model.model.layers.{layer}.self_attn.{target}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(rank, HIDDEN, generator=gen) * 0.5
            tensors[f"{key}.lora_B.weight"] = torch.randn(HIDDEN, rank, generator=gen) * 0.5
    return tensors


def write_adapter(out: Path, name: str, rank: int, base_dir: Path) -> dict[str, torch.Tensor]:
    out.mkdir(parents=True, exist_ok=True)
    tensors = adapter_tensors(name, rank)
    save_file(tensors, out / "adapter_model.safetensors")
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 2 * rank,
              "lora_dropout": 0.0, "bias": "none", "target_modules": list(TARGETS),
              "base_model_name_or_path": str(base_dir)}
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return tensors


def greedy(model: LlamaForCausalLM, input_ids: torch.Tensor) -> list[int]:
    with torch.no_grad():
        ids = model.generate(input_ids, max_new_tokens=PROBE_TOKENS, do_sample=False,
                             min_new_tokens=PROBE_TOKENS)
    return ids[0, input_ids.shape[1]:].tolist()


def greedy_with(model: LlamaForCausalLM, input_ids: torch.Tensor,
                tensors: dict[str, torch.Tensor], scale: float) -> list[int]:
    """Greedy output with the adapter merged into the weights (W += scale * B @ A), then unmerged."""
    deltas = []
    for layer in range(LAYERS):
        attn = model.model.layers[layer].self_attn
        for target in TARGETS:
            key = f"base_model.model.model.layers.{layer}.self_attn.{target}"
            delta = scale * tensors[f"{key}.lora_B.weight"] @ tensors[f"{key}.lora_A.weight"]
            deltas.append((getattr(attn, target).weight, delta))
    with torch.no_grad():
        for weight, delta in deltas:
            weight += delta
        try:
            return greedy(model, input_ids)
        finally:
            for weight, delta in deltas:
                weight -= delta


def parse_adapter(spec: str) -> tuple[str, int]:
    name, _, rank = spec.partition(":")
    return name, int(rank or 8)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True,
                        help="root folder; the model goes to OUT/model, adapters to OUT/adapters/NAME")
    parser.add_argument("--adapter", action="append", default=[], metavar="NAME:RANK",
                        help="an adapter to make (rank defaults to 8); repeatable")
    parser.add_argument("--seed", type=int, default=0, help="seed for the base model's weights")
    args = parser.parse_args(argv)
    model_dir = args.out / "model"
    if (model_dir / "config.json").exists():
        # Servers may be running on this model: add adapters, never rewrite it.
        tokenizer = PreTrainedTokenizerFast.from_pretrained(model_dir)
        model = LlamaForCausalLM.from_pretrained(model_dir).eval()
    else:
        model_dir.mkdir(parents=True, exist_ok=True)
        tokenizer = build_tokenizer(model_dir)
        model = build_model(model_dir, tokenizer, args.seed)
    input_ids = tokenizer(PROBE_PROMPT, return_tensors="pt").input_ids
    outputs = {BASE: greedy(model, input_ids)}
    adapters = {}
    for spec in args.adapter:
        name, rank = parse_adapter(spec)
        path = args.out / "adapters" / name
        tensors = write_adapter(path, name, rank, model_dir)
        output = greedy_with(model, input_ids, tensors, scale=2.0)
        same = [other for other, seen in outputs.items() if seen == output]
        if same:
            raise AdapterIndistinct(f"adapter {name} gives the same greedy output as {same}")
        outputs[name] = output
        adapters[name] = {"path": str(path), "rank": rank}
    json.dump({"model": str(model_dir), "served_name": DEFAULT_SERVED_NAME, "adapters": adapters,
               "probe_prompt": PROBE_PROMPT,
               "base_output": tokenizer.decode(outputs.pop(BASE), skip_special_tokens=True),
               "probe_outputs": {k: tokenizer.decode(v, skip_special_tokens=True)
                                 for k, v in outputs.items()}},
              sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
