"""Load the published checkpoints as they are: InSpatio-World-1.3B (safetensors) and TAEHV taew2_1 (.pth).

Errors are one line naming the file and what is wrong (which keys are missing/unexpected, which shapes differ).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from gen_server.errors import InputError

from .config import DiTConfig, TAEHVConfig
from .dit import CausalWanDiT

#: Wrapper prefixes the training code leaves in saved keys (generator wrapper, FSDP).
_STRIP = ("model.", "_fsdp_wrapped_module.")
#: Image-conditioning leftovers of the Wan base checkpoint that the causal v2v model does not use.
_IGNORED = ("img_emb.", "cross_attn.k_img", "cross_attn.v_img", "cross_attn.norm_k_img")


def _clean_key(key: str) -> str:
    key = key.replace("._fsdp_wrapped_module.", ".")
    for p in _STRIP:
        if key.startswith(p):
            key = key[len(p):]
    return key


def _listing(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def load_state_into(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strictly copy `state` into `module`; raise InputError naming missing/unexpected keys and bad shapes."""
    own = module.state_dict()
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {_listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {_listing(unexpected)}")
        raise InputError(f"{source}: checkpoint does not match the model ({'; '.join(parts)})")
    bad = [f"{k} {tuple(state[k].shape)} (model expects {tuple(v.shape)})"
           for k, v in own.items() if tuple(state[k].shape) != tuple(v.shape)]
    if bad:
        raise InputError(f"{source}: {len(bad)} tensors have the wrong shape: {_listing(bad, 4)}")
    module.load_state_dict(state, strict=True)


def read_dit_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an InSpatio-World / Wan DiT safetensors file into canonical (unprefixed) key names."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: DiT checkpoint not found")
    try:
        raw = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable safetensors file ({exc})") from None
    out = {}
    for key, value in raw.items():
        key = _clean_key(key)
        if any(s in key for s in _IGNORED):
            continue
        out[key] = value
    return out


def load_dit(path: str | Path, cfg: DiTConfig | None = None, device="cpu",
             dtype: torch.dtype = torch.bfloat16) -> CausalWanDiT:
    """Build the causal DiT (full 1.3B config unless given) and load the published safetensors into it."""
    cfg = cfg or DiTConfig()
    state = read_dit_state(path)
    with torch.device("meta"):
        model = CausalWanDiT(cfg)
    # Allocate once on the target device in the target dtype; load_state_dict's copy_ casts.
    model = model.to_empty(device=device).to(dtype)
    load_state_into(model, state, str(path))
    return model.eval().requires_grad_(False)


def save_dit(model: CausalWanDiT, path: str | Path, prefix: str = "model.") -> None:
    """Write weights in the published key layout (the training wrapper's `model.` prefix by default)."""
    from safetensors.torch import save_file

    save_file({prefix + k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(path))


def load_taehv(path: str | Path, cfg: TAEHVConfig | None = None, device="cpu",
               dtype: torch.dtype = torch.float16):
    """Build TAEHV and load a taew2_1.pth (torch state dict) or .safetensors file with the same keys."""
    from .taehv import TAEHV

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: TAEHV checkpoint not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for a corrupt pickle
        raise InputError(f"{path}: not a readable TAEHV checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict):
        raise InputError(f"{path}: expected a state dict, got {type(state).__name__}")
    model = TAEHV(cfg or TAEHVConfig())
    load_state_into(model, {k: v.float() for k, v in state.items()}, str(path))
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def file_sha256(path: str | Path, chunk: int = 1 << 24) -> str:
    """Content hash of a checkpoint (engine cache key); memoised next to nothing, so call it once."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
