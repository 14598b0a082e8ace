"""The exact response cache's parts: keys, stored entries, stream replay, coalescing, embeddings.

`proxy.policies.cache` composes them; the semantic cache reuses keys, scopes and entry replies.
"""
