"""`DELETE /admin/cache`: purge every entry, or those of one namespace, model or request key.

Fields come from the query string or a JSON body and must all match; `key` is the value of a
response's `x-sidecar-cache-key` header.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from proxy.cache.keys import purge_pattern
from proxy.errors import RequestError
from proxy.state.base import KVStore

PURGE_FIELDS = frozenset({"namespace", "model", "key"})


async def purge(store: KVStore, request: web.Request) -> web.Response:
    """Answer `{"purged": N}`; a store that cannot purge raises StateBackendError (503)."""
    params = dict(request.query)
    if request.can_read_body:
        try:
            body = orjson.loads(await request.read() or b"{}")
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            raise RequestError("The body must be a JSON object.", code="invalid_json")
        params.update({k: str(v) for k, v in body.items()})
    unknown = sorted(set(params) - PURGE_FIELDS)
    if unknown:
        raise RequestError(f"Unknown purge field '{unknown[0]}': use namespace, model or key.",
                           param=unknown[0], code="invalid_value")
    pattern = purge_pattern(None, params.get("namespace"), params.get("model"), params.get("key"))
    return web.json_response({"purged": await store.purge(pattern)})
