"""Per-shard logging: every line names its shard; levels are set per logger.

Shards are forked from the launcher, so each configures logging for itself at
start: a record factory stamps ``record.shard`` on every record (whoever made the
logger), and the default handler writes ``[shard N]`` at the front of each line.
"""
import logging
import sys

FORMAT = "%(asctime)s [shard %(shard)s] %(levelname)s %(name)s: %(message)s"

LEVELS = ("debug", "info", "warning", "error", "critical")


def parse_logger_level(text):
    """``"name=level"`` -> ``("name", "LEVEL")`` for ``--logger-log-level``."""
    name, sep, level = text.partition("=")
    if not sep or not name or level.lower() not in LEVELS:
        raise ValueError(f"bad --logger-log-level {text!r}: expected NAME=LEVEL with LEVEL one of {', '.join(LEVELS)}")
    return name, level.upper()


def setup(shard, default_level="info", logger_levels=()):
    """Configure this process's logging for `shard` (call once, after fork)."""
    previous = logging.getLogRecordFactory()
    base = getattr(previous, "shoal_base", previous)

    def factory(*args, **kwargs):
        record = base(*args, **kwargs)
        record.shard = shard
        return record

    factory.shoal_base = base
    logging.setLogRecordFactory(factory)
    root = logging.getLogger()
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(handler)
    root.setLevel(default_level.upper())
    for name, level in logger_levels:
        logging.getLogger(name).setLevel(level)
