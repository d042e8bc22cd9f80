"""cffi builder (API mode) for virtio-net checksum completion: module `shoal.drivers._vnet`.

`shoal_vnet_sum` is the folded 16-bit ones' complement sum (RFC 1071) of a buffer,
in network order, not complemented; `shoal_vnet_finish` uses it to finish, in place,
a transport checksum the kernel left partial (``VIRTIO_NET_HDR_F_NEEDS_CSUM``) on a
received frame of up to 64 KB, in one call per frame. Words are added in host order into a 64-bit
accumulator and the folded result is byte-swapped once (RFC 1071 section 2(B):
the sum is byte-order independent). It lives with the drivers, not in
`shoal.net`, because drivers sit below the stack and import nothing from it.
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

uint16_t shoal_vnet_sum(const uint8_t *p, size_t n)
{
    uint64_t s = 0;
    uint32_t w;
    while (n >= 4) {
        memcpy(&w, p, 4);
        s += w;
        p += 4;
        n -= 4;
    }
    if (n >= 2) {
        uint16_t h;
        memcpy(&h, p, 2);
        s += h;
        p += 2;
        n -= 2;
    }
    if (n) {
        /* the odd last octet is the high-order octet of a zero-padded big-endian word */
        uint8_t pad[2] = { p[0], 0 };
        uint16_t h;
        memcpy(&h, pad, 2);
        s += h;
    }
    while (s >> 16)
        s = (s & 0xffff) + (s >> 16);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    s = ((s & 0xff) << 8) | (s >> 8);
#endif
    return (uint16_t)s;
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
