"""Sharded services, like Seastar's ``sharded<T>``: one instance of a class per shard.

`Sharded(cls)` is a handle. `await handle.start(*args)` constructs ``cls(*args)``
on every shard; afterwards the handle can be passed to other shards (it pickles
as a reference), `local()` returns this shard's instance, and `invoke_on`,
`invoke_on_all` and `map_reduce` call a method (named, or any function taking the
instance first) where the data lives. `stop()` awaits the instances' ``stop()``
(if they have one) on every shard. Services still running when `main` returns
are stopped by the runtime, last started first.
"""
import inspect
import itertools

from shoal.runtime import smp

_instances = {}         # this shard's instances, by service id
_running = []           # handles started from this shard, in start order
_ids = itertools.count(1)
_NOTHING = object()


class Sharded:
    def __init__(self, cls):
        self.cls = cls
        self.id = None

    def __repr__(self):
        return f"<Sharded {self.cls.__qualname__} {self.id or 'not started'}>"

    def __reduce__(self):
        return _attach, (self.cls, self.id)

    async def start(self, *args, **kwargs):
        """Construct the instances. If one shard fails, the ones built are stopped
        and the error is raised."""
        if self.id is not None:
            raise RuntimeError(f"{self!r} is already started")
        self.id = f"{smp.this_shard()}.{next(_ids)}"
        try:
            await smp.invoke_on_all(_construct, self.id, self.cls, args, kwargs)
        except BaseException:
            await smp.invoke_on_all(_destroy, self.id)
            self.id = None
            raise
        _running.append(self)
        return self

    def local(self):
        """This shard's instance."""
        try:
            return _instances[self._started_id()]
        except KeyError:
            raise RuntimeError(f"{self!r} has no instance on shard {smp.this_shard()}") from None

    async def invoke_on(self, shard, method, *args, **kwargs):
        """Call `method` (a name or a function of the instance) on `shard`'s instance."""
        return await smp.submit_to(shard, _invoke, self._started_id(), method, args, kwargs)

    async def invoke_on_all(self, method, *args, **kwargs):
        return await smp.invoke_on_all(_invoke, self._started_id(), method, args, kwargs)

    async def map_reduce(self, method, *args, reduce, initial=_NOTHING, **kwargs):
        extra = {} if initial is _NOTHING else {"initial": initial}
        return await smp.map_reduce(_invoke, self._started_id(), method, args, kwargs, reduce=reduce, **extra)

    async def stop(self):
        """Stop the instances on every shard (their ``stop()`` if they define one)."""
        service_id = self._started_id()
        if self in _running:
            _running.remove(self)
        await smp.invoke_on_all(_destroy, service_id)
        self.id = None

    def _started_id(self):
        if self.id is None:
            raise RuntimeError(f"{self!r}: call start() first")
        return self.id


def _attach(cls, service_id):
    handle = Sharded(cls)
    handle.id = service_id
    return handle


def _construct(service_id, cls, args, kwargs):
    _instances[service_id] = cls(*args, **kwargs)


async def _destroy(service_id):
    instance = _instances.pop(service_id, None)
    stop = getattr(instance, "stop", None)
    if stop is not None:
        result = stop()
        if inspect.isawaitable(result):
            await result


async def _invoke(service_id, method, args, kwargs):
    try:
        instance = _instances[service_id]
    except KeyError:
        raise RuntimeError(f"service {service_id} is not running on shard {smp.this_shard()}") from None
    func = getattr(instance, method) if isinstance(method, str) else (lambda *a, **k: method(instance, *a, **k))
    result = func(*args, **kwargs)
    if inspect.isawaitable(result):
        result = await result
    return result


async def stop_all():
    """Stop every service started from this shard, last started first."""
    while _running:
        await _running[-1].stop()
