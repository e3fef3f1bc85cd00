"""Run hf-mem's command line against ``HF_ENDPOINT`` instead of https://huggingface.co.

hf-mem 0.5.6 writes the Hub's address into every URL and sends its requests through one
``httpx2.AsyncClient``; this wrapper rewrites, in that client's transport, each request
for huggingface.co to the local stand-in (scheme, host, port), then runs ``hf-mem``'s
own ``main()`` unchanged. Redirects (to the stand-in's "CDN") are followed by the client
as they would be on the Hub. Usage: ``python hf_mem_local.py --model-id org/name ...``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import httpx2

HUB_HOST = "huggingface.co"


def redirect_to(endpoint: str) -> None:
    """Send hf-mem's requests for huggingface.co to ``endpoint`` instead."""
    local = httpx2.URL(endpoint)
    handle = httpx2.AsyncHTTPTransport.handle_async_request

    async def handle_locally(self: httpx2.AsyncHTTPTransport, request: Any) -> Any:
        if request.url.host == HUB_HOST:
            request.url = request.url.copy_with(
                scheme=local.scheme, host=local.host, port=local.port
            )
            request.headers["Host"] = local.netloc.decode()
        return await handle(self, request)

    httpx2.AsyncHTTPTransport.handle_async_request = handle_locally  # type: ignore[method-assign]


if __name__ == "__main__":
    redirect_to(os.environ["HF_ENDPOINT"])
    from hf_mem.cli import main

    sys.argv[0] = "hf-mem"
    main()
