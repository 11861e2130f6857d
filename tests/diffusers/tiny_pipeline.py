"""A tiny Stable Diffusion XL pipeline with random weights, written to a folder by the test.

The same classes as SDXL base (UNet2DConditionModel with SDXL's text-time conditioning,
AutoencoderKL, CLIPTextModel + CLIPTextModelWithProjection, two CLIP BPE tokenizers, the Euler
scheduler), each a few layers wide: the worker's real loading code (AutoPipelineForText2Image,
local files only) and the real handler run on it on a CPU in well under a second per image, with
nothing downloaded. Its pictures are noise: what the tests check is sizes, seeds and errors.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

TEXT_HIDDEN = 32
TEXT_VOCAB = 1000


def byte_level_alphabet() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for bytes (as GPT-2 and CLIP do)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for code in codes]


def write_tokenizer(folder: Path) -> CLIPTokenizer:
    """A CLIP tokenizer from a vocabulary and merges written here: every byte alone and at a
    word's end, a few merges so common words are one token, and CLIP's two special tokens."""
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = byte_level_alphabet()
    vocab: dict[str, int] = {}
    for symbol in [*alphabet, *(char + "</w>" for char in alphabet)]:
        vocab[symbol] = len(vocab)
    merges = ["c a", "ca t</w>", "d o", "do g</w>"]
    for merge in merges:
        vocab["".join(merge.split())] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    assert len(vocab) < TEXT_VOCAB
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", "utf-8")
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=77)


def text_config() -> CLIPTextConfig:
    return CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=2,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=2,
        pad_token_id=1,
        vocab_size=TEXT_VOCAB,
        hidden_act="gelu",
        projection_dim=TEXT_HIDDEN,
    )


def build_tiny_sdxl(folder: Path, *, seed: int = 0) -> Path:
    """Save a tiny random SDXL pipeline to `folder` (diffusers' layout: model_index.json and a
    folder per component) and return it."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        # SDXL's extra conditioning: the pooled text embedding and the size/crop "time ids".
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=6 * 8 + TEXT_HIDDEN,
        # Both text encoders' hidden states side by side, as in SDXL.
        cross_attention_dim=2 * TEXT_HIDDEN,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(16, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )
    tokenizer = write_tokenizer(folder / "_tokenizer_source")
    pipeline = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(text_config()),
        text_encoder_2=CLIPTextModelWithProjection(text_config()),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=scheduler,
    )
    pipeline.save_pretrained(str(folder), safe_serialization=True)
    return folder
