"""Export a sentence-transformers model directory's transformer to `model.onnx` (optional speed-up).

Needs torch and transformers, so run it in a throwaway virtualenv, never the sidecar's:
    /tmp/stvenv/bin/python bench/export_onnx_model.py /path/to/copy/of/model-dir
The sidecar then runs that directory with onnxruntime when it is installed (semantic_cache.runtime
= "auto"); tests/semantic/test_onnx_encoder.py checks it with SIDECAR_TEST_ONNX_MODEL=<dir>.
"""

from __future__ import annotations

import sys
from typing import Any


def main(model_dir: str) -> None:
    import torch
    from transformers import AutoModel

    class LastHidden(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, ids: Any, mask: Any, types: Any) -> Any:
            return self.model(input_ids=ids, attention_mask=mask,
                              token_type_ids=types).last_hidden_state

    model = AutoModel.from_pretrained(model_dir).eval()
    sample = torch.ones((2, 8), dtype=torch.long)
    axes = {0: "batch", 1: "tokens"}
    torch.onnx.export(
        LastHidden(model), (sample, sample, torch.zeros_like(sample)), f"{model_dir}/model.onnx",
        input_names=["input_ids", "attention_mask", "token_type_ids"],
        output_names=["last_hidden_state"],
        dynamic_axes={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes,
                      "last_hidden_state": axes},
        opset_version=17, dynamo=False,
    )
    print(f"wrote {model_dir}/model.onnx")


if __name__ == "__main__":
    main(sys.argv[1])
