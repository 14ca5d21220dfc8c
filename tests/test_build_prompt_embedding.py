"""`timewalk build --text-encoder DIR --prompt TEXT`: the umT5 prompt embedding the neural generator
cross-attends to is computed at build time through transformers and stored in the world directory.
A tiny randomly initialised umT5 and a tokenizer built here stand in for the real 4096-wide encoder."""

import numpy as np
import pytest
import torch

from gen_server.cli import main


@pytest.fixture(scope="module")
def tiny_umt5(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    d = tmp_path_factory.mktemp("umt5")
    vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<unk>", "a", "room", "with", "pendulum", "ball"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                            eos_token="</s>").save_pretrained(d)
    torch.manual_seed(0)
    cfg = UMT5Config(vocab_size=len(vocab), d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2)
    UMT5EncoderModel(cfg).save_pretrained(d)
    return d


def test_build_stores_prompt_embedding(tiny_umt5, tmp_path):
    from safetensors import safe_open

    from gen_server.generators.inspatio.text_embed import PROMPT_FILE, load_prompt_embedding
    from gen_server.world.synth import write_synthetic_dataset

    scene = write_synthetic_dataset(tmp_path / "scene", width=96, height=64, seconds=0.5, fps=8)
    world = tmp_path / "world"
    assert main(["build", str(scene / "transforms.json"), "-o", str(world), "--quiet", "--device", "cpu",
                 "--no-source-video", "--text-encoder", str(tiny_umt5), "--prompt", "a room with a ball"]) == 0
    path = world / PROMPT_FILE
    with safe_open(str(path), "pt") as f:
        assert f.metadata()["prompt"] == "a room with a ball"
    emb = load_prompt_embedding(path, text_dim=16)
    assert emb.shape[-1] == 16 and torch.isfinite(emb).all()
    # Real tokens are encoded (non-zero rows), and a different prompt gives a different embedding.
    assert emb.abs().sum(-1).gt(0).sum() >= 5
    other = tmp_path / "world2"
    assert main(["build", str(scene / "transforms.json"), "-o", str(other), "--quiet", "--device", "cpu",
                 "--no-source-video", "--text-encoder", str(tiny_umt5), "--prompt", "pendulum"]) == 0
    assert not np.allclose(load_prompt_embedding(other / PROMPT_FILE, text_dim=16).numpy(), emb.numpy())


def test_missing_text_encoder_is_refused_before_building(tmp_path, capsys):
    world = tmp_path / "world"
    assert main(["build", str(tmp_path / "nothing.mp4"), "-o", str(world), "--text-encoder",
                 str(tmp_path / "no-encoder")]) == 2
    assert "text encoder folder not found" in capsys.readouterr().err
    assert not world.exists()
