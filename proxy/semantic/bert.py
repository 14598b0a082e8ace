"""A BERT sentence encoder in plain numpy, loaded from a sentence-transformers model directory.

Reads `tokenizer.json`, `config.json`, `model.safetensors` and the pooling/normalize modules the
directory's `modules.json` lists; no torch. Synchronous and CPU-bound: callers run it in a thread.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from safetensors.numpy import load_file
from tokenizers import Tokenizer

Array = npt.NDArray[np.float32]

_POOLING_MODES = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens")


@dataclass(frozen=True, slots=True)
class _Layer:
    qkv_w: Array  # (hidden, 3*hidden): query, key and value fused into one matmul
    qkv_b: Array
    attn_out_w: Array
    attn_out_b: Array
    ln1_w: Array
    ln1_b: Array
    inter_w: Array
    inter_b: Array
    out_w: Array
    out_b: Array
    ln2_w: Array
    ln2_b: Array


@dataclass(frozen=True, slots=True)
class EncoderSpec:
    """What a model directory says about how to turn token states into one sentence vector."""

    heads: int
    eps: float
    max_seq_length: int
    pooling: str
    normalize: bool


def _erf(x: Array) -> Array:
    # Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7): exact-erf GELU without scipy.
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027
                                                                          + t * 1.061405429))))
    out: Array = (sign * (1.0 - poly * np.exp(-a * a))).astype(np.float32)
    return out


def _gelu(x: Array) -> Array:
    return (0.5 * x * (1.0 + _erf(x * np.float32(0.7071067811865476)))).astype(np.float32)


def _layer_norm(x: Array, w: Array, b: Array, eps: float) -> Array:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    out: Array = ((x - mean) / np.sqrt(var + eps) * w + b).astype(np.float32)
    return out


def _read_json(path: Path) -> Any:
    with path.open("rb") as fh:
        return json.load(fh)


def read_spec(model_dir: Path) -> EncoderSpec:
    """Pooling and normalisation from modules.json, sizes from config.json."""
    config = _read_json(model_dir / "config.json")
    modules = _read_json(model_dir / "modules.json") if (model_dir / "modules.json").exists() else []
    pooling, normalize = "mean_tokens", False
    for module in modules:
        kind = str(module.get("type", ""))
        if kind.endswith(".Pooling"):
            pool_cfg = _read_json(model_dir / module["path"] / "config.json")
            chosen = [m for m in _POOLING_MODES if pool_cfg.get(f"pooling_mode_{m}")]
            pooling = chosen[0] if chosen else "mean_tokens"
        elif kind.endswith(".Normalize"):
            normalize = True
    max_len = int(config.get("max_position_embeddings", 512))
    st_cfg = model_dir / "sentence_bert_config.json"
    if st_cfg.exists():
        max_len = min(max_len, int(_read_json(st_cfg).get("max_seq_length", max_len)))
    return EncoderSpec(
        heads=int(config["num_attention_heads"]),
        eps=float(config.get("layer_norm_eps", 1e-12)),
        max_seq_length=max_len,
        pooling=pooling,
        normalize=normalize,
    )


class BatchedEncoder:
    """Tokenising and length-grouped batching shared by the encoders; `_forward` runs one batch."""

    _tokenizer: Tokenizer
    dim: int

    def vocab(self) -> dict[str, int]:
        """Word-piece ids; BERT vocabularies list whole words roughly by frequency."""
        return dict(self._tokenizer.get_vocab())

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return [enc.ids for enc in self._tokenizer.encode_batch(texts)]

    def encode(self, texts: list[str]) -> Array:
        """One row per text, in order; texts are grouped by length so padding stays small."""
        ids = self.tokenize(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for start in range(0, len(order), 32):
            chunk = order[start : start + 32]
            out[chunk] = self._forward([ids[i] for i in chunk])
        return out

    def _forward(self, batch: list[list[int]]) -> Array:
        raise NotImplementedError


class BertEncoder(BatchedEncoder):
    """Token ids in, one (optionally normalised) vector per text out; weights held in memory."""

    def __init__(self, model_dir: Path) -> None:
        self.spec = read_spec(model_dir)
        self._tokenizer = load_tokenizer(model_dir, self.spec.max_seq_length)
        weights = load_file(str(model_dir / "model.safetensors"))
        prefix = "bert." if "bert.embeddings.word_embeddings.weight" in weights else ""
        w = {k.removeprefix(prefix): v.astype(np.float32) for k, v in weights.items()}
        self._word = w["embeddings.word_embeddings.weight"]
        self._pos = w["embeddings.position_embeddings.weight"]
        self._type0 = w["embeddings.token_type_embeddings.weight"][0]
        self._emb_ln = (w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        self._layers = [_load_layer(w, f"encoder.layer.{i}.") for i in range(_count_layers(w))]
        self.dim = int(self._word.shape[1])

    def _forward(self, batch: list[list[int]]) -> Array:
        ids, mask = padded(batch)
        width = ids.shape[1]
        hidden = self._word[ids] + self._pos[:width][None, :, :] + self._type0
        hidden = _layer_norm(hidden, *self._emb_ln, self.spec.eps)
        bias = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]
        for layer in self._layers:
            hidden = self._block(hidden, bias, layer)
        return self._pool(hidden, mask)

    def _block(self, x: Array, bias: Array, p: _Layer) -> Array:
        batch, width, dim = x.shape
        heads = self.spec.heads
        qkv = (x @ p.qkv_w + p.qkv_b).reshape(batch, width, 3, heads, dim // heads)
        q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
        scores = q @ k.transpose(0, 1, 3, 2) / np.float32(np.sqrt(dim // heads)) + bias
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        attn = (scores / scores.sum(axis=-1, keepdims=True)) @ v
        context = attn.transpose(0, 2, 1, 3).reshape(batch, width, dim)
        x = _layer_norm(context @ p.attn_out_w + p.attn_out_b + x, p.ln1_w, p.ln1_b, self.spec.eps)
        inner = _gelu(x @ p.inter_w + p.inter_b)
        return _layer_norm(inner @ p.out_w + p.out_b + x, p.ln2_w, p.ln2_b, self.spec.eps)

    def _pool(self, hidden: Array, mask: Array) -> Array:
        return pool(hidden, mask, self.spec)


def pool(hidden: Array, mask: Array, spec: EncoderSpec) -> Array:
    """Token states to one vector per text, as the model directory's pooling module says."""
    mode = spec.pooling
    if mode == "cls_token":
        pooled = hidden[:, 0]
    elif mode == "max_tokens":
        pooled = np.where(mask[:, :, None] > 0, hidden, np.float32(-1e9)).max(axis=1)
    else:
        summed = (hidden * mask[:, :, None]).sum(axis=1)
        counts = np.clip(mask.sum(axis=1, keepdims=True), 1e-9, None)
        pooled = summed / (np.sqrt(counts) if mode == "mean_sqrt_len_tokens" else counts)
    if spec.normalize:
        pooled = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
    out: Array = pooled.astype(np.float32)
    return out


def padded(batch: list[list[int]]) -> tuple[npt.NDArray[np.int64], Array]:
    """Token ids padded to the longest, and the attention mask (1 for real tokens)."""
    width = max(len(x) for x in batch)
    ids = np.zeros((len(batch), width), dtype=np.int64)
    mask = np.zeros((len(batch), width), dtype=np.float32)
    for row, seq in enumerate(batch):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1.0
    return ids, mask


def load_tokenizer(model_dir: Path, max_length: int) -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.no_padding()
    return tokenizer


def _count_layers(w: dict[str, Array]) -> int:
    return len({k.split(".")[2] for k in w if k.startswith("encoder.layer.")})


def _load_layer(w: dict[str, Array], pre: str) -> _Layer:
    att = pre + "attention."
    # torch Linear stores (out, in); transpose once here so the forward pass is x @ W.
    qkv_w = np.concatenate([w[f"{att}self.{n}.weight"].T for n in ("query", "key", "value")], 1)
    qkv_b = np.concatenate([w[f"{att}self.{n}.bias"] for n in ("query", "key", "value")])
    return _Layer(
        qkv_w=np.ascontiguousarray(qkv_w),
        qkv_b=qkv_b,
        attn_out_w=np.ascontiguousarray(w[f"{att}output.dense.weight"].T),
        attn_out_b=w[f"{att}output.dense.bias"],
        ln1_w=w[f"{att}output.LayerNorm.weight"],
        ln1_b=w[f"{att}output.LayerNorm.bias"],
        inter_w=np.ascontiguousarray(w[f"{pre}intermediate.dense.weight"].T),
        inter_b=w[f"{pre}intermediate.dense.bias"],
        out_w=np.ascontiguousarray(w[f"{pre}output.dense.weight"].T),
        out_b=w[f"{pre}output.dense.bias"],
        ln2_w=w[f"{pre}output.LayerNorm.weight"],
        ln2_b=w[f"{pre}output.LayerNorm.bias"],
    )
