"""cffi builder (API mode) for the shared-memory virtual wire: `shoal.drivers._shmwire`.

A wire segment is a header and two single-producer/single-consumer rings of fixed
slots, one per direction. Only what needs real atomics is in C: publishing and
consuming slots with acquire/release ordering, and the sleep/wake handshake
(Dekker style: the sleeper stores ``sleeping`` then re-reads ``tail``, the producer
stores ``tail`` then reads ``sleeping``, with sequentially consistent ordering
between each store and load, so at least one of them sees the other). The
Python side is `drivers/virtual.py`.
"""
from cffi import FFI

ffibuilder = FFI()

ffibuilder.cdef(
    """
    size_t wire_segment_size(uint32_t slots, uint32_t slot_bytes);
    void wire_segment_init(char *seg, uint32_t slots, uint32_t slot_bytes);
    int wire_segment_check(char *seg);
    uint32_t wire_slots(char *seg);
    uint32_t wire_slot_bytes(char *seg);
    size_t wire_ring_offset(char *seg, int direction);
    size_t wire_data_offset(void);

    int wire_push(char *ring, uint32_t slots, uint32_t slot_bytes, const char *frame, uint32_t len);
    int wire_peek(char *ring, uint32_t slots, uint32_t slot_bytes, uint32_t *offs, uint32_t *lens, int max);
    void wire_release(char *ring, uint32_t n);
    uint64_t wire_used(char *ring);
    int wire_notify(char *ring, int efd);
    int wire_try_sleep(char *ring);
    void wire_awake(char *ring);
    """
)

ffibuilder.set_source(
    "shoal.drivers._shmwire",
    r"""
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#define CACHELINE 64
#define MAGIC 0x73686f616c574952ULL   /* "shoalWIR" */
#define SLOT_HDR 8u

typedef struct {
    uint64_t magic;
    uint32_t slots;        /* power of two */
    uint32_t slot_bytes;   /* SLOT_HDR + largest frame, multiple of 8 */
    char pad[CACHELINE - 16];
} wire_hdr;

typedef struct {
    uint64_t tail;         /* producer-owned: slots published */
    char pad0[CACHELINE - 8];
    uint64_t head;         /* consumer-owned: slots consumed */
    char pad1[CACHELINE - 8];
    uint32_t sleeping;     /* consumer is (about to be) asleep on its eventfd */
    char pad2[CACHELINE - 4];
} ring_ctl;

static size_t ring_size(uint32_t slots, uint32_t slot_bytes) {
    return sizeof(ring_ctl) + (size_t)slots * slot_bytes;
}

size_t wire_segment_size(uint32_t slots, uint32_t slot_bytes) {
    return sizeof(wire_hdr) + 2 * ring_size(slots, slot_bytes);
}

void wire_segment_init(char *seg, uint32_t slots, uint32_t slot_bytes) {
    memset(seg, 0, wire_segment_size(slots, slot_bytes));
    wire_hdr *h = (wire_hdr *)seg;
    h->slots = slots;
    h->slot_bytes = slot_bytes;
    __atomic_store_n(&h->magic, MAGIC, __ATOMIC_RELEASE);
}

int wire_segment_check(char *seg) {
    return __atomic_load_n(&((wire_hdr *)seg)->magic, __ATOMIC_ACQUIRE) == MAGIC;
}

uint32_t wire_slots(char *seg) { return ((wire_hdr *)seg)->slots; }
uint32_t wire_slot_bytes(char *seg) { return ((wire_hdr *)seg)->slot_bytes; }

size_t wire_ring_offset(char *seg, int direction) {
    wire_hdr *h = (wire_hdr *)seg;
    return sizeof(wire_hdr) + (size_t)direction * ring_size(h->slots, h->slot_bytes);
}

size_t wire_data_offset(void) { return sizeof(ring_ctl); }

/* Copy one frame into the next free slot and publish it.
 * Returns 1 when sent, 0 when the ring is full, -1 when the frame can never fit. */
int wire_push(char *ring, uint32_t slots, uint32_t slot_bytes, const char *frame, uint32_t len) {
    ring_ctl *r = (ring_ctl *)ring;
    if (len > slot_bytes - SLOT_HDR) return -1;
    uint64_t tail = r->tail;
    if (tail - __atomic_load_n(&r->head, __ATOMIC_ACQUIRE) >= slots) return 0;
    char *slot = (char *)(r + 1) + (size_t)(tail & (slots - 1)) * slot_bytes;
    *(uint32_t *)slot = len;
    memcpy(slot + SLOT_HDR, frame, len);
    __atomic_store_n(&r->tail, tail + 1, __ATOMIC_RELEASE);
    return 1;
}

/* Describe up to `max` published frames (offsets from the ring start, lengths)
 * without consuming them; the caller copies them out, then wire_release(n). */
int wire_peek(char *ring, uint32_t slots, uint32_t slot_bytes, uint32_t *offs, uint32_t *lens, int max) {
    ring_ctl *r = (ring_ctl *)ring;
    uint64_t head = r->head;
    uint64_t tail = __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE);
    int n = 0;
    for (; head + n != tail && n < max; n++) {
        size_t off = sizeof(ring_ctl) + (size_t)((head + n) & (slots - 1)) * slot_bytes;
        offs[n] = (uint32_t)(off + SLOT_HDR);
        lens[n] = *(uint32_t *)(ring + off);
    }
    return n;
}

void wire_release(char *ring, uint32_t n) {
    ring_ctl *r = (ring_ctl *)ring;
    __atomic_store_n(&r->head, r->head + n, __ATOMIC_RELEASE);
}

uint64_t wire_used(char *ring) {
    ring_ctl *r = (ring_ctl *)ring;
    return __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE) - __atomic_load_n(&r->head, __ATOMIC_ACQUIRE);
}

/* Producer, after publishing: wake the consumer through `efd` if and only if it
 * announced that it sleeps. Returns 1 when it wrote the eventfd. */
int wire_notify(char *ring, int efd) {
    ring_ctl *r = (ring_ctl *)ring;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (__atomic_load_n(&r->sleeping, __ATOMIC_SEQ_CST) && __atomic_exchange_n(&r->sleeping, 0, __ATOMIC_SEQ_CST)) {
        uint64_t one = 1;
        ssize_t w = write(efd, &one, sizeof one);
        (void)w;
        return 1;
    }
    return 0;
}

/* Consumer: announce sleep, then re-check the ring. Returns 1 if it may sleep. */
int wire_try_sleep(char *ring) {
    ring_ctl *r = (ring_ctl *)ring;
    __atomic_store_n(&r->sleeping, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&r->tail, __ATOMIC_SEQ_CST) != r->head) {
        __atomic_store_n(&r->sleeping, 0, __ATOMIC_SEQ_CST);
        return 0;
    }
    return 1;
}

void wire_awake(char *ring) {
    __atomic_store_n(&((ring_ctl *)ring)->sleeping, 0, __ATOMIC_SEQ_CST);
}
""",
    extra_compile_args=["-O2"],
)
