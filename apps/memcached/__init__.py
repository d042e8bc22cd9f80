"""shoal.apps.memcached: a sharded memcached server (text protocol over TCP and UDP).

Layers: :mod:`.protocol` (sans-I/O parser and reply builders), :mod:`.store` (one
shard's cache), :mod:`.sharding` (key ownership and cross-shard dispatch), and
:mod:`.server` (sockets and the command line).
"""
