"""The prompt embedding the DiT cross-attends to: umT5-XXL encoder output (tokens x 4096).

At build time, with a text encoder (a local Hugging Face umT5 folder), `encode_prompt` computes it and
`save_prompt_embedding` stores it in the world directory; without one, a stored embedding file (e.g. the
empty prompt's, computed once where the encoder is available) is loaded with `load_prompt_embedding`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from gen_server.errors import InputError

PROMPT_FILE = "prompt_embedding.safetensors"
_KEY = "prompt_embedding"


def save_prompt_embedding(path: str | Path, embedding: torch.Tensor, prompt: str = "") -> None:
    """Write (tokens, dim) float embedding atomically (temp + rename)."""
    from safetensors.torch import save_file

    if embedding.ndim != 2:
        raise ValueError(f"prompt embedding {tuple(embedding.shape)}: expected (tokens, dim)")
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    save_file({_KEY: embedding.detach().float().contiguous().cpu()}, str(tmp), metadata={"prompt": prompt})
    tmp.replace(path)


def load_prompt_embedding(path: str | Path, text_dim: int = 4096, max_tokens: int = 512) -> torch.Tensor:
    """Read a stored embedding -> (tokens, text_dim) float32; InputError naming the file if unusable."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: prompt embedding not found (build with a text encoder, or pass a stored "
                         f"empty-prompt embedding)")
    try:
        data = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise InputError(f"{path}: not a readable safetensors file ({exc})") from None
    emb = data.get(_KEY)
    if emb is None or emb.ndim != 2 or emb.shape[1] != text_dim or not 0 < emb.shape[0] <= max_tokens:
        got = None if emb is None else tuple(emb.shape)
        raise InputError(f"{path}: expected tensor {_KEY!r} of shape (1..{max_tokens}, {text_dim}), got {got}")
    return emb.float()


@torch.no_grad()
def embed_token_ids(encoder, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Run a (UMT5) encoder on one prompt's ids/mask (1, L) -> (n_real_tokens, dim); padding dropped,
    which equals the published zeroing of padded positions (the DiT zero-pads to text_len)."""
    hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state[0]
    return hidden[: int(mask[0].sum())].float()


def encode_prompt(prompt: str, encoder_dir: str | Path, device: str = "cpu") -> torch.Tensor:
    """umT5 encoder from a local folder (tokenizer + UMT5EncoderModel weights) -> (tokens, 4096)."""
    from transformers import AutoTokenizer, UMT5EncoderModel

    encoder_dir = Path(encoder_dir)
    if not encoder_dir.is_dir():
        raise InputError(f"{encoder_dir}: text encoder folder not found")
    tok = AutoTokenizer.from_pretrained(str(encoder_dir))
    model = UMT5EncoderModel.from_pretrained(str(encoder_dir)).to(device).eval()
    enc = tok([prompt], max_length=512, truncation=True, return_tensors="pt")
    return embed_token_ids(model, enc.input_ids.to(device), enc.attention_mask.to(device)).cpu()
