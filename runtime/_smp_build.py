"""cffi builder (API mode) for the cross-shard message rings: `shoal.runtime._smp`.

Only the parts that need real atomics live in C: index loads/stores with
acquire/release ordering, the doorbell bits and the sleep/wake handshake. The
segment layout is described in `runtime/ring.py`.
"""
from cffi import FFI

ffibuilder = FFI()

ffibuilder.cdef(
    """
    size_t smp_segment_size(uint32_t nshards, uint32_t ring_bytes);
    void smp_segment_init(char *seg, uint32_t nshards, uint32_t ring_bytes);
    size_t smp_ring_offset(char *seg, uint32_t src, uint32_t dst);
    uint32_t smp_ring_bytes(char *seg);
    uint32_t smp_nshards(char *seg);

    int ring_push(char *ring, uint32_t cap, const char *data, uint32_t len, uint32_t flags, int publish);
    void ring_publish(char *ring);
    int ring_push_many(char *ring, uint32_t cap, const char *data, const uint32_t *lens, int n);
    int ring_pop_batch(char *ring, uint32_t cap, uint32_t *offs, uint32_t *lens, uint32_t *flags,
                       int max, uint64_t *new_head);
    void ring_release(char *ring, uint64_t new_head);
    uint64_t ring_used(char *ring);

    int smp_notify(char *seg, uint32_t dst, uint32_t src, int efd);
    uint64_t smp_take_doorbell(char *seg, uint32_t dst, uint32_t word);
    void smp_set_doorbell(char *seg, uint32_t dst, uint32_t src);
    int smp_try_sleep(char *seg, uint32_t dst);
    void smp_awake(char *seg, uint32_t dst);
    """
)

ffibuilder.set_source(
    "shoal.runtime._smp",
    r"""
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#define CACHELINE 64
#define MAGIC 0x73686f616c534d50ULL   /* "shoalSMP" */
#define REC_HDR 8u
#define WRAP 0xFFFFFFFFu

/* Segment header, then one control block per shard, then nshards*nshards rings.
 * A ring is two cache lines of indices followed by `ring_bytes` of data. */
typedef struct {
    uint64_t magic;
    uint32_t nshards;
    uint32_t ring_bytes;
    uint32_t words;        /* doorbell words per shard */
    uint32_t ctl_bytes;    /* size of one control block */
} seg_hdr;

/* Three cache lines: what the consumer reads (the published tail), what the
 * producer reads (head), and the producer's private cursor, kept apart so that
 * pushing without publishing does not disturb the consumer's cache. */
typedef struct {
    uint64_t tail;        /* published by the producer (release), read by the consumer */
    char pad0[CACHELINE - 8];
    uint64_t head;        /* published by the consumer (release), read by the producer */
    char pad1[CACHELINE - 8];
    uint64_t next_tail;   /* producer-private: end of the records written so far */
    uint64_t head_cache;  /* producer-private: last head seen */
    char pad2[CACHELINE - 16];
} ring_ctl;

static inline uint32_t align8(uint32_t n) { return (n + 7u) & ~7u; }

static inline char *ctl_of(char *seg, uint32_t shard) {
    seg_hdr *h = (seg_hdr *)seg;
    return seg + CACHELINE + (size_t)shard * h->ctl_bytes;
}
/* control block: uint32 sleeping at 0, doorbell words from byte 8 */
static inline uint32_t *sleeping_of(char *seg, uint32_t shard) { return (uint32_t *)ctl_of(seg, shard); }
static inline uint64_t *doorbell_of(char *seg, uint32_t shard) { return (uint64_t *)(ctl_of(seg, shard) + 8); }

static uint32_t ctl_size(uint32_t nshards) {
    uint32_t words = (nshards + 63) / 64;
    uint32_t bytes = 8 + 8 * words;
    return (bytes + CACHELINE - 1) / CACHELINE * CACHELINE;
}

size_t smp_segment_size(uint32_t nshards, uint32_t ring_bytes) {
    return CACHELINE + (size_t)nshards * ctl_size(nshards)
        + (size_t)nshards * nshards * (sizeof(ring_ctl) + ring_bytes);
}

void smp_segment_init(char *seg, uint32_t nshards, uint32_t ring_bytes) {
    memset(seg, 0, smp_segment_size(nshards, ring_bytes));
    seg_hdr *h = (seg_hdr *)seg;
    h->nshards = nshards;
    h->ring_bytes = ring_bytes;
    h->words = (nshards + 63) / 64;
    h->ctl_bytes = ctl_size(nshards);
    __atomic_store_n(&h->magic, MAGIC, __ATOMIC_RELEASE);
}

uint32_t smp_ring_bytes(char *seg) { return ((seg_hdr *)seg)->ring_bytes; }
uint32_t smp_nshards(char *seg) { return ((seg_hdr *)seg)->nshards; }

size_t smp_ring_offset(char *seg, uint32_t src, uint32_t dst) {
    seg_hdr *h = (seg_hdr *)seg;
    return CACHELINE + (size_t)h->nshards * h->ctl_bytes
        + ((size_t)src * h->nshards + dst) * (sizeof(ring_ctl) + h->ring_bytes);
}

/* Reserve `need` contiguous bytes; a record never wraps: when the space up to
 * the end is too short, a WRAP marker fills it and the record starts at 0.
 * Returns the data index, or -1 when the ring has no room (back-pressure). */
static inline int64_t reserve(ring_ctl *r, uint32_t cap, uint32_t need, uint64_t tail, uint64_t *tail_out) {
    uint32_t idx = (uint32_t)(tail & (cap - 1));
    uint32_t room_to_end = cap - idx;
    uint64_t total = room_to_end < need ? (uint64_t)room_to_end + need : need;
    if (tail + total - r->head_cache > cap) {
        r->head_cache = __atomic_load_n(&r->head, __ATOMIC_ACQUIRE);
        if (tail + total - r->head_cache > cap) return -1;
    }
    char *data = (char *)(r + 1);
    if (room_to_end < need) {
        *(uint32_t *)(data + idx) = WRAP;
        tail += room_to_end;
        idx = 0;
    }
    *tail_out = tail + need;
    return idx;
}

void ring_publish(char *ring) {
    ring_ctl *r = (ring_ctl *)ring;
    if (r->next_tail != r->tail) __atomic_store_n(&r->tail, r->next_tail, __ATOMIC_RELEASE);
}

/* Write one record; it becomes visible at the next publish (now, if `publish`).
 * Returns 1 when written, 0 when the ring is full, -1 when it can never fit. */
int ring_push(char *ring, uint32_t cap, const char *payload, uint32_t len, uint32_t flags, int publish) {
    ring_ctl *r = (ring_ctl *)ring;
    uint32_t need = REC_HDR + align8(len);
    if (need > cap / 2) return -1;
    uint64_t new_tail;
    int64_t idx = reserve(r, cap, need, r->next_tail, &new_tail);
    if (idx < 0) {
        ring_publish(ring);   /* a full ring must not hide what is already written */
        return 0;
    }
    char *data = (char *)(r + 1);
    ((uint32_t *)(data + idx))[0] = len;
    ((uint32_t *)(data + idx))[1] = flags;
    memcpy(data + idx + REC_HDR, payload, len);
    r->next_tail = new_tail;
    if (publish) __atomic_store_n(&r->tail, new_tail, __ATOMIC_RELEASE);
    return 1;
}

/* Push up to n records whose payloads lie back to back in `payloads`, publishing
 * the tail once. Returns how many were pushed. */
int ring_push_many(char *ring, uint32_t cap, const char *payloads, const uint32_t *lens, int n) {
    ring_ctl *r = (ring_ctl *)ring;
    char *data = (char *)(r + 1);
    int done = 0;
    uint64_t tail = r->next_tail;
    for (; done < n; done++) {
        uint32_t len = lens[done];
        uint32_t need = REC_HDR + align8(len);
        uint64_t new_tail;
        if (need > cap / 2) break;
        int64_t idx = reserve(r, cap, need, tail, &new_tail);
        if (idx < 0) break;
        ((uint32_t *)(data + idx))[0] = len;
        ((uint32_t *)(data + idx))[1] = 1;
        memcpy(data + idx + REC_HDR, payloads, len);
        payloads += len;
        tail = new_tail;
    }
    r->next_tail = tail;
    ring_publish(ring);
    return done;
}

/* Describe up to `max` readable records without consuming them: payload offsets
 * (into the data area), lengths and flags. The caller reads them in place and
 * then calls ring_release(new_head). */
int ring_pop_batch(char *ring, uint32_t cap, uint32_t *offs, uint32_t *lens, uint32_t *flags,
                   int max, uint64_t *new_head) {
    ring_ctl *r = (ring_ctl *)ring;
    char *data = (char *)(r + 1);
    uint64_t head = r->head;
    uint64_t tail = __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE);
    int n = 0;
    while (head != tail && n < max) {
        uint32_t idx = (uint32_t)(head & (cap - 1));
        uint32_t len = *(uint32_t *)(data + idx);
        if (len == WRAP) { head += cap - idx; continue; }
        offs[n] = idx + REC_HDR;
        lens[n] = len;
        flags[n] = *(uint32_t *)(data + idx + 4);
        n++;
        head += REC_HDR + align8(len);
    }
    *new_head = head;
    return n;
}

void ring_release(char *ring, uint64_t new_head) {
    __atomic_store_n(&((ring_ctl *)ring)->head, new_head, __ATOMIC_RELEASE);
}

uint64_t ring_used(char *ring) {
    ring_ctl *r = (ring_ctl *)ring;
    return __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE) - __atomic_load_n(&r->head, __ATOMIC_ACQUIRE);
}

/* After publishing into ring src->dst: ring dst's doorbell, and wake dst through
 * its eventfd if (and only if) it announced it is going to sleep. The seq_cst
 * RMW on the doorbell pairs with smp_try_sleep's store+load (Dekker style), so
 * either the sleeper sees the bell or we see the sleeper. Returns 1 if woken. */
int smp_notify(char *seg, uint32_t dst, uint32_t src, int efd) {
    __atomic_fetch_or(&doorbell_of(seg, dst)[src / 64], 1ULL << (src % 64), __ATOMIC_SEQ_CST);
    uint32_t *sl = sleeping_of(seg, dst);
    if (__atomic_load_n(sl, __ATOMIC_SEQ_CST) && __atomic_exchange_n(sl, 0, __ATOMIC_SEQ_CST)) {
        uint64_t one = 1;
        ssize_t w = write(efd, &one, sizeof one);
        (void)w;
        return 1;
    }
    return 0;
}

uint64_t smp_take_doorbell(char *seg, uint32_t dst, uint32_t word) {
    uint64_t *w = &doorbell_of(seg, dst)[word];
    if (!__atomic_load_n(w, __ATOMIC_RELAXED)) return 0;
    return __atomic_exchange_n(w, 0, __ATOMIC_ACQUIRE);
}

void smp_set_doorbell(char *seg, uint32_t dst, uint32_t src) {
    __atomic_fetch_or(&doorbell_of(seg, dst)[src / 64], 1ULL << (src % 64), __ATOMIC_RELAXED);
}

/* Announce sleep, then re-check the bells. Returns 1 if the caller may sleep. */
int smp_try_sleep(char *seg, uint32_t dst) {
    seg_hdr *h = (seg_hdr *)seg;
    uint32_t *sl = sleeping_of(seg, dst);
    __atomic_store_n(sl, 1, __ATOMIC_SEQ_CST);
    for (uint32_t i = 0; i < h->words; i++) {
        if (__atomic_load_n(&doorbell_of(seg, dst)[i], __ATOMIC_SEQ_CST)) {
            __atomic_store_n(sl, 0, __ATOMIC_SEQ_CST);
            return 0;
        }
    }
    return 1;
}

void smp_awake(char *seg, uint32_t dst) {
    __atomic_store_n(sleeping_of(seg, dst), 0, __ATOMIC_SEQ_CST);
}
""",
    extra_compile_args=["-O2"],
)
