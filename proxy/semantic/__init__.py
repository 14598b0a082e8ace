"""The semantic cache's parts: embedders (local numpy/onnxruntime, upstream), the guard, the
vector indexes (memory, Redis-shared) and the engine that composes them; see docs/semantic-cache.md.

`proxy.policies.semantic_cache` is the policy built from them.
"""
