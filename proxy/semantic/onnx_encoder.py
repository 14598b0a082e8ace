"""The same sentence encoder run by onnxruntime, for model directories that ship a `model.onnx`.

Tokenisation and pooling are shared with the numpy encoder; only the transformer runs in ONNX.
Used when onnxruntime is installed and the directory has the file; otherwise numpy runs.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from proxy.semantic.bert import Array, BatchedEncoder, load_tokenizer, padded, pool, read_spec


def onnx_file(model_dir: Path) -> Path | None:
    """`model.onnx` at the top of the directory or under `onnx/` (as Hugging Face repos ship it)."""
    for candidate in (model_dir / "model.onnx", model_dir / "onnx" / "model.onnx"):
        if candidate.is_file():
            return candidate
    return None


def onnxruntime_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


class OnnxEncoder(BatchedEncoder):
    """Drop-in for `BertEncoder`: `encode`, `tokenize`, `vocab`, `dim`, `spec`."""

    def __init__(self, model_dir: Path, threads: int = 1) -> None:
        ort: Any = importlib.import_module("onnxruntime")
        path = onnx_file(model_dir)
        if path is None:
            raise FileNotFoundError(f"no model.onnx in {model_dir}")
        self.spec = read_spec(model_dir)
        self._tokenizer = load_tokenizer(model_dir, self.spec.max_seq_length)
        options = ort.SessionOptions()
        # One worker thread embeds; more ONNX threads would only compete with the event loop.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(path), options,
                                             providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self._session.get_inputs()}
        self.dim = int(self._forward([[101, 102]]).shape[1])

    def _forward(self, batch: list[list[int]]) -> Array:
        ids, mask = padded(batch)
        feed = {"input_ids": ids, "attention_mask": mask.astype(np.int64)}
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = np.zeros_like(ids)
        hidden = np.asarray(self._session.run(None, feed)[0], dtype=np.float32)
        return pool(hidden, mask, self.spec)
