"""Fixtures for the shoal.net tests: every API test runs on both reactor backends."""
import asyncio

import pytest
import uvloop

from shoal.net import api

BACKENDS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture(params=sorted(BACKENDS))
def arun(request):
    """Run a coroutine to completion on a fresh loop of the parametrized backend,
    with the posix stack installed as a fresh shard would have it."""
    factory = BACKENDS[request.param]

    def run(coro, timeout=60):
        async def bounded():
            async with asyncio.timeout(timeout):
                return await coro
        api.use_stack(None)
        try:
            with asyncio.Runner(loop_factory=factory) as runner:
                return runner.run(bounded())
        finally:
            api.use_stack(None)
    run.backend = request.param
    return run
