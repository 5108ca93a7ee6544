"""InternVL2's remote-code checkpoint converted to transformers' native layout, proven on a tiny checkpoint.

A tiny model is saved twice (runner/tiny/internvl2_remote.py): natively, and in OpenGVLab's published layout
(InternLM2 `wqkv`, InternViT `qkv`, `mlp1`, a sentencepiece tokenizer). Here: converting the remote folder gives
the native weights back exactly; the fused q/k/v split and every rename are checked against a forward pass written
from the remote architecture's definition (so the same mistake in both directions cannot hide); the tokenizer is
checked against sentencepiece itself; the runner gives the same prompts and predictions on the converted folder as
on the native one, from a --model-path in the remote format, and from a Hub id whose snapshot the fetch step
converted into the cache.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, build_panorama_data, parse_runner_output, runner_command, runner_env
from PIL import Image
from safetensors.torch import load_file

from orchestrator.hub_fetch import convert_snapshot
from runner.adapters import open_adapter
from runner.adapters.internvl2 import (
    INTERNVL2_SYSTEM_MESSAGE,
    expand_image_placeholder,
    internvl2_chat_prompt,
    internvl2_native_prompt,
)
from runner.convert_internvl2 import (
    CONVERTER_VERSION,
    ConversionError,
    checkpoint_format,
    convert,
    convert_into_cache,
    converted_dir,
    find_converted,
    plan_conversion,
)
from runner.loop import DEFAULT_PROMPT_TEMPLATE
from runner.registry import get_model
from runner.tiny.internvl2_remote import SentencePieceSettings, build_tiny_internvl2_pair, train_sentencepiece

MODEL = "internvl2-2b"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("internvl2_pair")
    built = build_tiny_internvl2_pair(root)
    converted = convert(built.remote, root / "converted")
    return built.remote, built.native, converted


@pytest.fixture(scope="module")
def chat_data(tmp_path_factory: pytest.TempPathFactory):
    # 3 panoramas (512x256, 384x192, 640x320) x 2 queries = 6 samples.
    return build_panorama_data(tmp_path_factory.mktemp("internvl2_data"), num_images=3, queries=("location", "people"))


def load_adapter(checkpoint: Path | str):
    return open_adapter(get_model(MODEL), str(checkpoint), device=torch.device("cpu"), dtype=torch.float32)


def native_model(folder: Path):
    from transformers import InternVLForConditionalGeneration

    model, info = InternVLForConditionalGeneration.from_pretrained(
        folder, dtype=torch.float32, output_loading_info=True
    )
    assert not any(info.values()), info  # no missing, unexpected or mismatched weights
    model.config._attn_implementation = "eager"
    return model.eval()


# --- weights and files ------------------------------------------------------------------------------------------


def test_conversion_gives_the_native_weights_back_exactly(pair):
    remote, native, converted = pair
    ours, theirs = load_file(str(converted / "model.safetensors")), load_file(str(native / "model.safetensors"))
    assert sorted(ours) == sorted(theirs)
    for name, tensor in theirs.items():
        assert ours[name].dtype == tensor.dtype and torch.equal(ours[name], tensor), name
    # The remote folder really is the published layout: fused projections, remote names, two shards.
    remote_weights = {}
    for shard in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        remote_weights |= load_file(str(remote / shard))
    assert remote_weights["language_model.model.layers.0.attention.wqkv.weight"].shape == ((4 + 2 * 2) * 8, 32)
    assert remote_weights["vision_model.encoder.layers.0.attn.qkv.bias"].shape == (3 * 32,)
    assert {"mlp1.0.weight", "mlp1.3.bias", "language_model.output.weight"} <= set(remote_weights)
    assert not any("q_proj" in name or "self_attn" in name for name in remote_weights)

    remote_config = json.loads((remote / "config.json").read_text())
    assert (remote_config["model_type"], remote_config["llm_config"]["model_type"]) == ("internvl_chat", "internlm2")
    assert checkpoint_format(remote) == "remote" and checkpoint_format(converted) == "native"
    # config, generation config, processor, chat template and tokenizer equal the native checkpoint's.
    for name in ("config.json", "generation_config.json", "processor_config.json", "tokenizer_config.json"):
        assert json.loads((converted / name).read_text()) == json.loads((native / name).read_text()), name
    assert (converted / "chat_template.jinja").read_text() == (native / "chat_template.jinja").read_text()
    config = json.loads((converted / "config.json").read_text())
    assert config["model_type"] == "internvl" and config["text_config"]["model_type"] == "llama"
    assert config["text_config"]["rope_parameters"] == {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e6}
    assert (config["image_seq_length"], config["downsample_ratio"], config["vision_feature_layer"]) == (4, 0.5, -1)
    assert config["vision_config"]["attention_bias"] is True and config["vision_config"]["use_mean_pooling"] is True
    generation = json.loads((converted / "generation_config.json").read_text())
    tokenizer_config = json.loads((remote / "tokenizer_config.json").read_text())
    im_end = next(int(i) for i, t in tokenizer_config["added_tokens_decoder"].items() if t["content"] == "<|im_end|>")
    assert generation["eos_token_id"] == im_end  # only the template separator, as the remote chat()

    record = json.loads((converted / "conversion.json").read_text())
    assert record["converter_version"] == CONVERTER_VERSION and record["source_commit"] is None
    assert record["source"] == str(remote.resolve())
    expected_files = {path.name for path in remote.iterdir() if path.name != "vlm-ablation-random-weights.json"}
    assert set(record["source_files"]) == expected_files
    for name, digest in record["source_files"].items():
        assert digest == hashlib.sha256((remote / name).read_bytes()).hexdigest()
    assert (converted / "vlm-ablation-random-weights.json").is_file()  # random weights stay marked as such


def test_big_checkpoints_are_written_in_shards(pair, tmp_path):
    remote, native, _ = pair
    out = convert(remote, tmp_path / "sharded", max_shard_bytes=40_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 3 and all((out / name).stat().st_size < 40_000 + 80_000 for name in shards)
    expected = load_file(str(native / "model.safetensors"))
    written = {}
    for name in shards:
        written |= load_file(str(out / name))
    assert sorted(written) == sorted(expected) == sorted(index["weight_map"])
    assert all(torch.equal(written[name], expected[name]) for name in expected)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in expected.values())
    native_model(out)


# --- independent checks of the split and the renames ------------------------------------------------------------


def remote_weights(remote: Path) -> dict[str, torch.Tensor]:
    index = json.loads((remote / "model.safetensors.index.json").read_text())
    tensors: dict[str, torch.Tensor] = {}
    for shard in set(index["weight_map"].values()):
        tensors |= load_file(str(remote / shard))
    return tensors


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def internlm2_attention(
    w: dict[str, torch.Tensor], layer: int, x: torch.Tensor, llm: dict, *, naive_split: bool = False
) -> torch.Tensor:
    """One InternLM2 attention block from its fused weights, as its modeling code defines it: wqkv output viewed
    as (kv_heads, queries_per_kv_head + 2, head_dim), the first g slots queries, then key, then value."""
    batch, length, hidden = x.shape
    heads, kv_heads = llm["num_attention_heads"], llm["num_key_value_heads"]
    dim, groups = hidden // heads, heads // kv_heads
    fused = x @ w[f"language_model.model.layers.{layer}.attention.wqkv.weight"].T
    if naive_split:  # the mistake to catch: reading the rows as [all q; all k; all v]
        q, k, v = fused.split([heads * dim, kv_heads * dim, kv_heads * dim], dim=-1)
        q, k, v = (t.reshape(batch, length, -1, dim) for t in (q, k, v))
    else:
        grouped = fused.reshape(batch, length, kv_heads, groups + 2, dim)
        q = grouped[:, :, :, :groups].reshape(batch, length, heads, dim)
        k, v = grouped[:, :, :, -2], grouped[:, :, :, -1]
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (batch, heads, length, dim)
    inverse = 1.0 / (llm["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inverse)
    cos, sin = torch.cat((angles, angles), -1).cos(), torch.cat((angles, angles), -1).sin()
    q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)  # query head i reads kv head i//g
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(dim)
    scores = scores.masked_fill(torch.ones(length, length, dtype=torch.bool).triu(1), float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, length, hidden)
    return out @ w[f"language_model.model.layers.{layer}.attention.wo.weight"].T


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def internvit_features(w: dict[str, torch.Tensor], pixels: torch.Tensor, config: dict) -> torch.Tensor:
    """InternViT, then InternVL2's extract_feature: drop CLS, pixel shuffle (v2), mlp1."""
    vit = config["vision_config"]
    heads, eps = vit["num_attention_heads"], vit["layer_norm_eps"]
    prefix = "vision_model."
    x = torch.nn.functional.conv2d(
        pixels, w[prefix + "embeddings.patch_embedding.weight"], w[prefix + "embeddings.patch_embedding.bias"],
        stride=vit["patch_size"],
    ).flatten(2).transpose(1, 2)  # fmt: skip
    tiles, _, width = x.shape
    x = torch.cat([w[prefix + "embeddings.class_embedding"].expand(tiles, 1, width), x], dim=1)
    x = x + w[prefix + "embeddings.position_embedding"]
    for layer in range(vit["num_hidden_layers"]):
        p = f"{prefix}encoder.layers.{layer}."

        def norm(t: torch.Tensor, name: str, p: str = p) -> torch.Tensor:
            return torch.nn.functional.layer_norm(t, (width,), w[p + name + ".weight"], w[p + name + ".bias"], eps)

        h = norm(x, "norm1")
        qkv = (h @ w[p + "attn.qkv.weight"].T + w[p + "attn.qkv.bias"]).reshape(tiles, -1, 3, heads, width // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attended = ((q @ k.transpose(-1, -2)) * (width // heads) ** -0.5).softmax(-1) @ v
        attended = attended.transpose(1, 2).reshape(tiles, -1, width)
        x = x + (attended @ w[p + "attn.proj.weight"].T + w[p + "attn.proj.bias"]) * w[p + "ls1"]
        hidden = torch.nn.functional.gelu(norm(x, "norm2") @ w[p + "mlp.fc1.weight"].T + w[p + "mlp.fc1.bias"])
        x = x + (hidden @ w[p + "mlp.fc2.weight"].T + w[p + "mlp.fc2.bias"]) * w[p + "ls2"]
    x = x[:, 1:]
    side, scale = int(x.shape[1] ** 0.5), config["downsample_ratio"]
    x = x.reshape(tiles, side, side, width)  # (n, w, h, c) in the remote code's naming
    x = x.reshape(tiles, side, int(side * scale), int(width / scale)).permute(0, 2, 1, 3)
    x = x.reshape(tiles, int(side * scale), int(side * scale), int(width / scale**2)).permute(0, 2, 1, 3)
    x = x.reshape(tiles, -1, x.shape[-1])
    x = torch.nn.functional.layer_norm(x, (x.shape[-1],), w["mlp1.0.weight"], w["mlp1.0.bias"])
    x = torch.nn.functional.gelu(x @ w["mlp1.1.weight"].T + w["mlp1.1.bias"])
    return x @ w["mlp1.3.weight"].T + w["mlp1.3.bias"]


def internvl2_reference_logits(w, config, input_ids, pixels, image_token_id) -> torch.Tensor:
    """InternVLChatModel's forward for one unpadded prompt, from the remote tensors and the remote definitions."""
    llm = config["llm_config"]
    x = w["language_model.model.tok_embeddings.weight"][input_ids].clone()
    x[input_ids == image_token_id] = internvit_features(w, pixels, config).reshape(-1, x.shape[-1])
    x = x[None]  # a batch of one
    eps = llm["rms_norm_eps"]
    for layer in range(llm["num_hidden_layers"]):
        p = f"language_model.model.layers.{layer}."
        x = x + internlm2_attention(w, layer, rms_norm(x, w[p + "attention_norm.weight"], eps), llm)
        h = rms_norm(x, w[p + "ffn_norm.weight"], eps)
        gate, up = h @ w[p + "feed_forward.w1.weight"].T, h @ w[p + "feed_forward.w3.weight"].T
        x = x + (torch.nn.functional.silu(gate) * up) @ w[p + "feed_forward.w2.weight"].T
    x = rms_norm(x, w["language_model.model.norm.weight"], eps)
    return (x @ w["language_model.output.weight"].T)[0]


def test_qkv_split_matches_internlm2s_grouped_layout(pair):
    """Layer 0's attention by hand from the fused wqkv equals the converted Llama attention; the naive split
    ([q; k; v] in row order) does not, so this test would catch it."""
    remote, _, converted = pair
    w = remote_weights(remote)
    llm = json.loads((remote / "config.json").read_text())["llm_config"]
    assert llm["num_attention_heads"] // llm["num_key_value_heads"] == 2  # grouped: the layout matters
    model = native_model(converted)
    attention = model.model.language_model.layers[0].self_attn
    x = torch.randn(1, 7, llm["hidden_size"], generator=torch.Generator().manual_seed(0))
    positions = torch.arange(7)[None]
    cos_sin = model.model.language_model.rotary_emb(x, positions)
    mask = torch.full((7, 7), float("-inf")).triu(1)[None, None]
    with torch.no_grad():
        ours, _ = attention(x, position_embeddings=cos_sin, attention_mask=mask)
        expected = internlm2_attention(w, 0, x, llm)
        naive = internlm2_attention(w, 0, x, llm, naive_split=True)
    assert torch.allclose(ours, expected, atol=1e-5), (ours - expected).abs().max()
    assert not torch.allclose(naive, expected, atol=1e-2)


def test_converted_model_computes_what_the_remote_model_computes(pair):
    """Logits of the converted native model equal a forward pass written from InternVL2's remote definitions
    (InternViT with ls1/ls2, pixel shuffle v2, mlp1, InternLM2) over the REMOTE tensors: every rename and split
    is checked against the architecture, not against its own inverse."""
    remote, _, converted = pair
    w, config = remote_weights(remote), json.loads((remote / "config.json").read_text())
    adapter = load_adapter(converted)
    image = Image.linear_gradient("L").resize((84, 28)).convert("RGB")  # 3 tiles of 28 px + thumbnail
    prompt = adapter.build_prompt(DEFAULT_PROMPT_TEMPLATE.format(query="people"))
    inputs = adapter.build_inputs([image], [prompt])
    assert inputs["pixel_values"].shape == (4, 3, 28, 28)
    model = native_model(converted)
    with torch.no_grad():
        ours = model(**inputs).logits[0]
        expected = internvl2_reference_logits(
            w, config, inputs["input_ids"][0], inputs["pixel_values"], model.config.image_token_id
        )
        # Sensitivity: the same pass with the layer scales swapped is clearly different.
        swapped = dict(w)
        swapped["vision_model.encoder.layers.0.ls1"] = w["vision_model.encoder.layers.0.ls2"]
        swapped["vision_model.encoder.layers.0.ls2"] = w["vision_model.encoder.layers.0.ls1"]
        wrong = internvl2_reference_logits(
            swapped, config, inputs["input_ids"][0], inputs["pixel_values"], model.config.image_token_id
        )
    assert torch.allclose(ours, expected, atol=1e-4), (ours - expected).abs().max()
    assert (wrong - expected).abs().max() > 1e-2


# --- tokenizer -------------------------------------------------------------------------------------------------


def reference_ids(folder: Path, text: str) -> list[int]:
    """InternLM2Tokenizer's ids, from its definition: <s>, then each added token as its id and the text between
    them through sentencepiece (SentencePieceProcessor.encode, as its _tokenize does)."""
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    added = {t["content"]: int(i) for i, t in json.loads((folder / "tokenizer_config.json").read_text())[
        "added_tokens_decoder"].items()}  # fmt: skip
    ids, pieces = [added["<s>"]], re.split("(" + "|".join(map(re.escape, sorted(added, key=len)[::-1])) + ")", text)
    for piece in pieces:
        ids += [added[piece]] if piece in added else processor.encode(piece) if piece else []
    return ids


TOKENIZER_TEXTS = [
    "Hello world",
    " leading and trailing  ",
    "two  spaces\nnew line\ttab",
    INTERNVL2_SYSTEM_MESSAGE,
    "emoji 😀 and accents: café, naïve; full-width：（）",
    "digits 360-degree 2024 3.14",
    "<|im_start|>user\nhi<|im_end|><|im_start|>assistant\n",
    "<|im_end|> space after special and before <|im_start|>",
    "literal <image> and <img/> stay text",
]


@pytest.mark.parametrize(
    "settings",
    [
        SentencePieceSettings(),
        SentencePieceSettings(add_dummy_prefix=True, remove_extra_whitespaces=True),
        SentencePieceSettings(add_dummy_prefix=True, normalization_rule_name="nmt_nfkc"),
    ],
    ids=["identity", "dummy-prefix-strip-spaces", "dummy-prefix-nfkc"],
)
def test_converted_tokenizer_gives_sentencepieces_ids(settings, tmp_path):
    from runner.convert_internvl2 import fast_tokenizer, read_remote_tokenizer
    from runner.tiny.internvl2_remote import remote_tokenizer_config

    model = train_sentencepiece(settings)
    (tmp_path / "tokenizer.model").write_bytes(model)
    import sentencepiece

    pieces = sentencepiece.SentencePieceProcessor(model_proto=model).get_piece_size()
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(remote_tokenizer_config(pieces)))
    tokenizer = fast_tokenizer(read_remote_tokenizer(tmp_path))
    prompts = [
        expand_image_placeholder(internvl2_chat_prompt(DEFAULT_PROMPT_TEMPLATE.format(query=q)), tiles, 256)
        for q, tiles in (("location", 9), ("people", 1))
    ]
    for text in TOKENIZER_TEXTS + prompts:
        assert tokenizer(text)["input_ids"] == reference_ids(tmp_path, text), text
    # Chat tokens keep their sentencepiece slots, image tokens follow the vocabulary; <video> is appended last.
    assert tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|im_start|>", "<img>", "<IMG_CONTEXT>", "</box>"]) == [
        pieces - 2, pieces - 1, pieces, pieces + 2, pieces + 8,
    ]  # fmt: skip
    assert tokenizer.convert_tokens_to_ids("<video>") == pieces + 9 == len(tokenizer) - 1
    # The two documented differences, both for text no prompt here contains: "<video>" is one token (the remote
    # tokenizer spells it out; the adapter refuses instructions with it), and a renamed placeholder piece's old
    # text, which sentencepiece emits whole when the piece is user-defined, is spelled out.
    for text in ("a <video> b", "a [UNUSED_TOKEN_145] b"):
        assert tokenizer(text)["input_ids"] != reference_ids(tmp_path, text)
    # Decoding (what predictions are made of) gives sentencepiece's text back.
    processor = sentencepiece.SentencePieceProcessor(model_proto=model)
    for text in TOKENIZER_TEXTS[:6]:
        ids = processor.encode(text)
        assert tokenizer.decode(ids, skip_special_tokens=True) == processor.decode(ids), text


def test_native_processor_gives_the_remote_codes_input_ids(pair):
    """The converted processor's ids for a sample equal InternLM2Tokenizer's ids (by definition, above) for the
    prompt the remote chat() builds, with <image> expanded to 4 tokens per tile x (3 tiles + thumbnail)."""
    remote, _, converted = pair
    adapter = load_adapter(converted)
    instruction = DEFAULT_PROMPT_TEMPLATE.format(query="location")
    prompt = adapter.build_prompt(instruction)
    assert prompt == internvl2_native_prompt(instruction, "<s>")
    image = Image.linear_gradient("L").resize((84, 28)).convert("RGB")
    ids = adapter.build_inputs([image], [prompt])["input_ids"][0].tolist()
    assert ids == reference_ids(remote, expand_image_placeholder(internvl2_chat_prompt(instruction), 4, 4))


# --- the runner ---------------------------------------------------------------------------------------------------


def run(*args: str | Path, env: dict[str, str] | None = None):
    command = runner_command(*args)
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=240, env=env or runner_env(), cwd=REPO_ROOT
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return parse_runner_output(command[3:], completed.returncode, completed.stdout, completed.stderr)


def runner_args(data, out: Path) -> list[str | Path]:
    return [
        "--model", MODEL, "--data", data.data_file, "--output-dir", out, "--batch-size", "4",
        "--max-new-tokens", "8", "--min-new-tokens", "2", "--device", "cpu", "--dtype", "float32", "--no-progress",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def on_native(pair, chat_data, tmp_path_factory: pytest.TempPathFactory):
    """The runner on the native tiny checkpoint: what every other route must reproduce."""
    return run(*runner_args(chat_data, tmp_path_factory.mktemp("on_native")), "--model-path", pair[1])


def test_runner_on_the_converted_checkpoint_equals_the_native_one(pair, chat_data, on_native, tmp_path):
    converted = pair[2]
    on_converted = run(*runner_args(chat_data, tmp_path / "converted"), "--model-path", converted)
    key = {(r.image, r.query): (r.prompt, r.prediction) for r in on_native.predictions}
    assert {(r.image, r.query): (r.prompt, r.prediction) for r in on_converted.predictions} == key
    assert len(key) == 6 and all(prediction for _, prediction in key.values())
    assert len({prediction for _, prediction in key.values()}) > 1  # the image and query make a difference
    for record in on_converted.predictions:
        assert record.prompt == internvl2_native_prompt(DEFAULT_PROMPT_TEMPLATE.format(query=record.query), "<s>")
    assert on_converted.manifest is not None and on_converted.manifest.random_weights is True
    assert "converting" not in on_converted.stderr  # a native folder is loaded as is


def test_adapter_converts_a_remote_format_folder_into_a_temporary_one(pair, capsys):
    remote, native, _ = pair
    scratch = Path(tempfile.gettempdir())
    before = set(scratch.glob("vlm-ablation-internvl2-*"))
    adapter = load_adapter(remote)
    log = capsys.readouterr().err
    assert f"{remote}: a local folder in the remote-code format; converting it to the native format into" in log
    assert set(scratch.glob("vlm-ablation-internvl2-*")) == before  # removed after loading
    assert type(adapter.model).__name__ == "InternVLForConditionalGeneration" and adapter.remote is False
    assert adapter.resolved_revision is None
    assert adapter.manifest_extras() == {
        "conversion": {
            "source": str(remote.resolve()),
            "source_commit": None,
            "converter_version": CONVERTER_VERSION,
            "converted_at_load": True,
            "converted_folder": None,
        }
    }
    reference = load_adapter(native)
    assert reference.manifest_extras() == {}
    for instruction in ("describe the <image>", "what is in the <video>?", "<IMG_CONTEXT>"):
        with pytest.raises(ValueError, match=r"reserves for images and video"):
            adapter.build_prompt(instruction)
    image = Image.linear_gradient("L").resize((56, 28)).convert("RGB")
    prompt = adapter.build_prompt(DEFAULT_PROMPT_TEMPLATE.format(query="sky"))
    assert prompt == reference.build_prompt(DEFAULT_PROMPT_TEMPLATE.format(query="sky"))
    ours = adapter.generate(adapter.build_inputs([image], [prompt]), 8, 2)
    theirs = reference.generate(reference.build_inputs([image], [prompt]), 8, 2)
    assert torch.equal(ours, theirs)


def fake_hub_cache(hf_home: Path, snapshot_source: Path) -> Path:
    """A Hugging Face cache holding OpenGVLab/InternVL2-2B at COMMIT (main -> COMMIT), as snapshot_download leaves
    it, with the tiny remote checkpoint's files standing in for the real ones."""
    repo = hf_home / "hub" / "models--OpenGVLab--InternVL2-2B"
    snapshot = repo / "snapshots" / COMMIT
    shutil.copytree(snapshot_source, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


def test_fetch_converts_the_snapshot_once_and_the_runner_loads_it_offline(pair, chat_data, on_native, tmp_path):
    remote, native, _ = pair
    hf_home = tmp_path / "hf"
    snapshot = fake_hub_cache(hf_home, remote)
    spec = get_model(MODEL)

    converted = convert_snapshot(spec.hub_id, snapshot, COMMIT, hf_home=hf_home)
    assert converted == hf_home / "vlm-ablation-converted" / "OpenGVLab--InternVL2-2B" / COMMIT
    assert converted == converted_dir(spec.hub_id, COMMIT, hf_home) == find_converted(spec.hub_id, COMMIT, hf_home)
    record = json.loads((converted / "conversion.json").read_text())
    assert (record["source"], record["source_commit"]) == (spec.hub_id, COMMIT)
    assert not list(converted.parent.glob(".*partial*"))
    stamp = (converted / "conversion.json").stat().st_mtime_ns
    assert convert_snapshot(spec.hub_id, snapshot, COMMIT, hf_home=hf_home) == converted  # reused, not redone
    assert (converted / "conversion.json").stat().st_mtime_ns == stamp
    assert convert_snapshot("Salesforce/blip2-opt-2.7b", native, COMMIT, hf_home=hf_home) is None  # native: none

    # The run: the Hub id (no --model-path), offline, registry revision "main" resolved from the cache's refs.
    env = runner_env() | {"HF_HOME": str(hf_home)}
    on_hub = run(*runner_args(chat_data, tmp_path / "hub"), env=env)
    assert {(r.image, r.query): (r.prompt, r.prediction) for r in on_hub.predictions} == {
        (r.image, r.query): (r.prompt, r.prediction) for r in on_native.predictions
    }
    assert f"using the converted checkpoint {converted} (made by the fetch step)" in on_hub.stderr
    assert "converting" not in on_hub.stderr
    assert on_hub.manifest is not None
    assert (on_hub.manifest.model_path, on_hub.manifest.resolved_revision) == (None, COMMIT)


def test_a_snapshot_nobody_converted_is_converted_at_load(pair, chat_data, on_native, tmp_path):
    """The Hub id offline with only the downloaded snapshot in the cache (no fetch-step conversion): converted into a
    temporary folder, said on stderr, same predictions; the read-only cache gets no new files."""
    remote, _, _ = pair
    hf_home = tmp_path / "hf"
    fake_hub_cache(hf_home, remote)
    before = sorted(path for path in hf_home.rglob("*"))
    on_hub = run(*runner_args(chat_data, tmp_path / "hub"), env=runner_env() | {"HF_HOME": str(hf_home)})
    assert f"OpenGVLab/InternVL2-2B: no converted folder for commit {COMMIT}; converting it" in on_hub.stderr
    assert sorted(path for path in hf_home.rglob("*")) == before
    assert {(r.image, r.query): (r.prompt, r.prediction) for r in on_hub.predictions} == {
        (r.image, r.query): (r.prompt, r.prediction) for r in on_native.predictions
    }
    assert on_hub.manifest is not None and on_hub.manifest.resolved_revision == COMMIT


def test_fetch_step_prints_the_converted_folder_in_its_result_line(pair, tmp_path, monkeypatch, capsys):
    """hub_fetch.main with the download replaced (the Hub cannot run here) by the local stand-in snapshot."""
    import huggingface_hub
    from huggingface_hub import constants

    from orchestrator import hub_fetch

    remote, _, _ = pair
    hf_home = tmp_path / "hf"
    snapshot = fake_hub_cache(hf_home, remote)
    monkeypatch.setattr(constants, "HF_HOME", str(hf_home))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda **kwargs: str(snapshot))
    assert hub_fetch.main(["--model-id", "OpenGVLab/InternVL2-2B", "--revision", "main"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(hub_fetch.FETCH_RESULT_PREFIX)
    assert json.loads(last[len(hub_fetch.FETCH_RESULT_PREFIX) :]) == {
        "model_id": "OpenGVLab/InternVL2-2B",
        "revision": "main",
        "resolved_revision": COMMIT,
        "converted": str(hf_home / "vlm-ablation-converted" / "OpenGVLab--InternVL2-2B" / COMMIT),
    }
    # A snapshot that cannot be converted fails the fetch with the reason.
    (snapshot / "tokenizer.model").unlink()
    shutil.rmtree(hf_home / "vlm-ablation-converted")
    assert hub_fetch.main(["--model-id", "OpenGVLab/InternVL2-2B", "--revision", "main"]) == 1
    assert "error: could not convert OpenGVLab/InternVL2-2B@" in capsys.readouterr().out


def test_converter_command_line(pair, tmp_path, capsys):
    from runner.convert_internvl2 import main

    remote, native, _ = pair
    assert main([str(remote), str(tmp_path / "out"), "--source", "OpenGVLab/InternVL2-2B", "--commit", COMMIT]) == 0
    record = json.loads((tmp_path / "out" / "conversion.json").read_text())
    assert (record["source"], record["source_commit"]) == ("OpenGVLab/InternVL2-2B", COMMIT)
    assert main([str(native), str(tmp_path / "again")]) == 2
    assert "already a native InternVL checkpoint" in capsys.readouterr().err


def test_a_stale_or_partial_converted_folder_is_not_used(pair, tmp_path):
    remote, _, _ = pair
    target = converted_dir("OpenGVLab/InternVL2-2B", COMMIT, tmp_path)
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")  # a conversion killed before it wrote conversion.json
    assert find_converted("OpenGVLab/InternVL2-2B", COMMIT, tmp_path) is None
    assert convert_into_cache(remote, model_id="OpenGVLab/InternVL2-2B", commit=COMMIT, hf_home=tmp_path) == target
    record = json.loads((target / "conversion.json").read_text())
    record["converter_version"] = CONVERTER_VERSION - 1  # made by an older converter
    (target / "conversion.json").write_text(json.dumps(record))
    assert find_converted("OpenGVLab/InternVL2-2B", COMMIT, tmp_path) is None
    assert find_converted("OpenGVLab/InternVL2-2B", "main", tmp_path) is None  # only commit hashes are keys
    with pytest.raises(ConversionError, match="full commit hash, got 'main'"):
        converted_dir("OpenGVLab/InternVL2-2B", "main", tmp_path)


# --- clear errors -------------------------------------------------------------------------------------------------


def edited_copy(remote: Path, folder: Path, edit_config=None) -> Path:
    shutil.copytree(remote, folder)
    if edit_config is not None:
        config = json.loads((folder / "config.json").read_text())
        edit_config(config)
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_folders_that_are_neither_format_are_refused_by_name(pair, tmp_path):
    remote, native, _ = pair
    (tmp_path / "llava").mkdir()
    (tmp_path / "llava" / "config.json").write_text(json.dumps({"model_type": "llava"}))
    with pytest.raises(ConversionError, match=r"llava/config.json: model_type is 'llava'.*'internvl_chat'.*'internvl'"):
        convert(tmp_path / "llava", tmp_path / "out1")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConversionError, match=r"empty: no config.json"):
        convert(tmp_path / "empty", tmp_path / "out2")
    with pytest.raises(ConversionError, match=r"already a native InternVL checkpoint"):
        convert(native, tmp_path / "out3")
    # The adapter says the same before loading anything.
    with pytest.raises(ValueError, match=r"model_type is 'llava'"):
        load_adapter(tmp_path / "llava")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c["llm_config"].update(model_type="qwen2"), r"llm_config.model_type is 'qwen2'.*'internlm2'"),
        (lambda c: c.update(template="phi3-chat"), r"template is 'phi3-chat'.*'internlm2-chat'"),
        (lambda c: c.update(ps_version="v1"), r"ps_version \(pixel shuffle\) is 'v1'"),
        (lambda c: c.update(select_layer=-4), r"select_layer is -4"),
        (lambda c: c["vision_config"].update(qk_normalization=True), r"qk_normalization is True"),
        (lambda c: c["vision_config"].pop("qkv_bias"), r"vision_config: missing 'qkv_bias'"),
        (lambda c: c["llm_config"].update(num_key_value_heads=4), r"wqkv has 64 rows; the config's heads need 96"),
        (
            lambda c: c["llm_config"].update(intermediate_size=128),
            r"do not match the native InternVL model.*'language_model.model.layers.0.mlp.down_proj.weight', \(32, 64\)",
        ),
    ],
    ids=["other-llm", "other-template", "pixel-shuffle-v1", "other-layer", "qk-norm", "no-qkv-bias", "heads", "sizes"],
)
def test_layouts_this_converter_does_not_reproduce_are_refused(pair, tmp_path, edit, message):
    remote, _, _ = pair
    folder = edited_copy(remote, tmp_path / "remote", edit)
    with pytest.raises(ConversionError, match=message):
        convert(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_unknown_tensors_and_missing_files_are_refused(pair, tmp_path):
    from safetensors.torch import save_file

    remote, _, _ = pair
    folder = edited_copy(remote, tmp_path / "remote")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    save_file({"vision_model.extra.weight": torch.zeros(2)}, str(folder / "extra.safetensors"))
    index["weight_map"]["vision_model.extra.weight"] = "extra.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ConversionError, match=r"does not know: \['vision_model.extra.weight'\]"):
        convert(folder, tmp_path / "out")
    # A stored rotary inv_freq (older InternLM2 checkpoints) is recomputed by the model: skipped, not refused.
    save_file(
        {"language_model.model.layers.0.attention.rotary_emb.inv_freq": torch.ones(4)},
        str(folder / "extra.safetensors"),
    )
    del index["weight_map"]["vision_model.extra.weight"]
    index["weight_map"]["language_model.model.layers.0.attention.rotary_emb.inv_freq"] = "extra.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    out = convert(folder, tmp_path / "with_inv_freq")
    assert "language_model.model.layers.0.attention.rotary_emb.inv_freq" not in load_file(
        str(out / "model.safetensors")
    )
    (folder / "extra.safetensors").unlink()
    with pytest.raises(ConversionError, match=r"shards \['extra.safetensors'\] are not in the folder"):
        convert(folder, tmp_path / "out")
    del index["weight_map"]["language_model.model.layers.0.attention.rotary_emb.inv_freq"]
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "tokenizer.model").unlink()
    with pytest.raises(ConversionError, match=r"no tokenizer.model"):
        convert(folder, tmp_path / "out")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(ConversionError, match=r"taken: exists and is not empty"):
        convert(remote, tmp_path / "taken")


# --- on a connected host only: the REAL checkpoint's metadata ------------------------------------------------------

HUB_CHECKS = os.environ.get("VLM_ABLATION_HUB_CHECKS") == "1"


@pytest.mark.skipif(not HUB_CHECKS, reason="set VLM_ABLATION_HUB_CHECKS=1 on a host with Hub access")
def test_real_checkpoint_converts_from_its_metadata(tmp_path):
    """Downloads only config.json and the tokenizer files (about 1.5 MB) and reads the safetensors headers over
    HTTP (no weights): every tensor name and shape of the published checkpoint maps onto the native model, and the
    real InternLM2 tokenizer converts to a fast one with sentencepiece's ids for the runner's prompts."""
    from huggingface_hub import get_safetensors_metadata, hf_hub_download

    spec = get_model(MODEL)
    for name in ("config.json", "tokenizer.model", "tokenizer_config.json"):
        hf_hub_download(spec.hub_id, name, revision=spec.revision, local_dir=tmp_path)
    metadata = get_safetensors_metadata(spec.hub_id, revision=spec.revision)
    headers = {
        Path(file_name): {name: (tuple(info.shape), info.dtype) for name, info in file_metadata.tensors.items()}
        for file_name, file_metadata in metadata.files_metadata.items()
    }
    config = json.loads((tmp_path / "config.json").read_text())
    plan = plan_conversion(config, tmp_path, headers, spec.hub_id)  # raises on any mismatch
    parameters = sum(math.prod(target.shape) for target in plan.targets)
    assert parameters == pytest.approx(2.21e9, rel=0.03)  # the model card's size
    assert (plan.config.image_token_id, plan.config.image_seq_length) == (92546, 256)
    assert plan.generation_config().eos_token_id == 92542  # <|im_end|>
    text = plan.config.text_config
    assert (text.hidden_size, text.num_attention_heads, text.num_key_value_heads) == (2048, 16, 8)
