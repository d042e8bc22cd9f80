"""cffi builder (API mode) for the Internet checksum: module `shoal.net.native.wire._checksum`.

The sum is computed over 32-bit native-order words into a 64-bit accumulator and
folded at the end; RFC 1071 section 2(B) (byte-order independence) lets us sum in
host order and swap once. The result is the folded 16-bit ones' complement sum in
network order, *not* complemented, so partial sums over fragments combine.
"""
from cffi import FFI

ffibuilder = FFI()
ffibuilder.cdef("uint16_t shoal_csum_partial(const uint8_t *p, size_t n, uint32_t acc);")
ffibuilder.set_source(
    "shoal.net.native.wire._checksum",
    r"""
#include <stdint.h>
#include <string.h>

static uint32_t fold64(uint64_t s)
{
    while (s >> 16)
        s = (s & 0xffff) + (s >> 16);
    return (uint32_t)s;
}

uint16_t shoal_csum_partial(const uint8_t *p, size_t n, uint32_t acc)
{
    uint64_t s = 0;
    uint32_t w32;
    uint16_t w16;
    while (n >= 32) {
        uint64_t a, b, c, d;
        memcpy(&a, p, 8); memcpy(&b, p + 8, 8); memcpy(&c, p + 16, 8); memcpy(&d, p + 24, 8);
        s += (a & 0xffffffffu) + (a >> 32) + (b & 0xffffffffu) + (b >> 32)
           + (c & 0xffffffffu) + (c >> 32) + (d & 0xffffffffu) + (d >> 32);
        p += 32; n -= 32;
    }
    while (n >= 4) { memcpy(&w32, p, 4); s += w32; p += 4; n -= 4; }
    if (n >= 2) { memcpy(&w16, p, 2); s += w16; p += 2; n -= 2; }
    if (n) {
        /* A trailing odd byte is the high byte of a zero-padded big-endian word. */
        uint8_t pad[2] = { p[0], 0 };
        memcpy(&w16, pad, 2);
        s += w16;
    }
    uint32_t r = fold64(s);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    r = ((r & 0xff) << 8) | (r >> 8);
#endif
    return (uint16_t)fold64((uint64_t)r + acc);
}
""",
    extra_compile_args=["-O2"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
