"""``python -m shoal.apps.memcached``: see :mod:`shoal.apps.memcached.server`."""
import sys

from shoal.apps.memcached.server import main

sys.exit(main())
