"""cffi builder (API mode) for the reactor's stall watch: module `shoal.runtime._watchdog`.

`shoal_watch` is the stall detector's loop (`runtime/reactor.py`): every quarter of
`limit` it reads the time of the reactor's last tick and returns that time once it is
`limit` seconds old, or -1 once `stop_fd` is readable. It runs in C because cffi calls
it with the GIL released: the waiting and the checks need no Python, so the watchdog
thread takes the GIL only to log a stall. Its Python predecessor took the GIL 40 times
a second (at the default 100 ms limit), and each time the shard waited for the thread
switch: 1.6-4.2 % of a native shard's requests under wrk in three A/B runs
(`docs/benchmarks.md`).

The tick is a double the reactor stores in an ``array('d')`` once per tick: an aligned
8-byte store, which the atomic load here reads whole. The clock is CLOCK_MONOTONIC,
the clock of Python's ``time.monotonic``.
"""
from cffi import FFI

ffibuilder = FFI()
ffibuilder.cdef("""
    double shoal_watch(const double *last_tick, double limit, double reported, int stop_fd);
""")
ffibuilder.set_source(
    "shoal.runtime._watchdog",
    r"""
#include <errno.h>
#include <poll.h>
#include <time.h>

static double monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The tick `limit` seconds old that is not `reported` (the last one returned), or -1
 * once `stop_fd` is readable (or polling it fails). */
double shoal_watch(const double *last_tick, double limit, double reported, int stop_fd)
{
    int period_ms = (int)(limit * 250.0);
    struct pollfd stop = {stop_fd, POLLIN, 0};
    if (period_ms < 1)
        period_ms = 1;
    for (;;) {
        int r = poll(&stop, 1, period_ms);
        if (r > 0 || (r < 0 && errno != EINTR))
            return -1.0;
        double tick;
        __atomic_load(last_tick, &tick, __ATOMIC_ACQUIRE);
        if (tick != reported && monotonic() - tick >= limit)
            return tick;
    }
}
""",
    extra_compile_args=["-O2"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
