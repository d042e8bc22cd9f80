"""Deterministic flow steering: which queue (and so which shard) a TCP or UDP flow belongs to.

A multi-queue device spreads received frames over its queues, one queue per shard,
and the shard that owns a queue owns every connection whose frames land on it (the
shared-nothing rule: a connection's state lives on one shard only). Hardware NICs do
this with RSS; a Linux TAP does it with "automq", which is not deterministic (a new
flow lands on ``symmetric_hash % queues``, then follows the queue that last wrote a
frame of that flow, and forgets after about 3 s; see ../shared/platform-notes.md).
A shard choosing an ephemeral port for an outgoing connection, or deciding whether a
frame is its own, needs the rule itself, so shoal installs its own:

    queue = (((sport ^ dport) * 0x9E3779B1) mod 2**32 >> 16) mod queues

`flow_queue` computes it in Python, and `tap_steering_program` loads the same
function as an eBPF socket-filter program that ``TUNSETSTEERINGEBPF`` makes the
TAP's queue selector (the kernel takes the program's return value modulo the queue
count). XOR of the two ports makes the rule symmetric, so both directions of a flow
agree; the multiplication (Fibonacci hashing) mixes the bits, because Linux picks even
source ports for ``connect`` and a plain ``sport % 2`` would leave one queue idle.
Addresses are left out: every flow of a shoal host has the same local address.

The program sends everything that is not a whole TCP or UDP datagram in IPv4 (ARP,
ICMP, IPv6, IP fragments, whose later pieces carry no ports) to queue 0; the stack
on shard 0 hands such frames on to the shard that needs them.
"""
import ctypes
import os
import struct

GOLDEN = 0x9E3779B1
"""2**32 divided by the golden ratio: Knuth's multiplicative hashing constant."""

_BPF_PROG_LOAD = 5
_BPF_PROG_TYPE_SOCKET_FILTER = 1
_SYS_BPF = 321  # x86_64
_BPF_ATTR_SIZE = 128
_LOG_SIZE = 1 << 16


def flow_queue(sport, dport, queues):
    """The queue (0 .. queues-1) of the flow between ports `sport` and `dport` (either order)."""
    return ((((sport ^ dport) * GOLDEN) & 0xFFFFFFFF) >> 16) % queues


# eBPF instruction encoding (Documentation/bpf/standard/instruction-set.rst):
# struct bpf_insn { u8 opcode; u8 dst:4, src:4; s16 offset; s32 imm; }
_INSN = struct.Struct("<BBhi")
_LD_ABS_B, _LD_ABS_H, _LD_IND_H = 0x30, 0x28, 0x48
_MOV64_REG, _MOV64_IMM, _AND64_IMM, _LSH64_IMM, _XOR64_REG = 0xBF, 0xB7, 0x57, 0x67, 0xAF
_MUL32_IMM, _RSH32_IMM = 0x24, 0x74
_JEQ_IMM, _JNE_IMM, _EXIT = 0x15, 0x55, 0x95


def _insn(op, dst=0, src=0, off=0, imm=0):
    if imm >= 1 << 31:
        imm -= 1 << 32  # the field is signed; 32-bit operations use its low 32 bits
    return _INSN.pack(op, dst | (src << 4), off, imm)


def steering_instructions():
    """The eBPF program (bytes) computing `flow_queue`'s hash for an Ethernet frame.

    ``LD_ABS``/``LD_IND`` read big-endian fields at offsets from the start of the
    frame (the TAP hands the program an skb at its MAC header) and end the program
    with return value 0 when the frame is too short, so no bounds checks are needed.
    They require the context pointer in r6 and clobber r1-r5; r7-r9 hold what must
    survive them.
    """
    # A jump at index i with offset k continues at i + 1 + k; RETURN_0 is the tail.
    RETURN_0 = 20
    prog = [
        _insn(_MOV64_REG, 6, 1),                         # 0  r6 = skb
        _insn(_LD_ABS_H, imm=12),                        # 1  r0 = EtherType
        _insn(_JNE_IMM, 0, off=RETURN_0 - 3, imm=0x0800),  # 2  not IPv4
        _insn(_LD_ABS_B, imm=23),                        # 3  r0 = IP protocol
        _insn(_JEQ_IMM, 0, off=1, imm=6),                # 4  TCP: on to 6
        _insn(_JNE_IMM, 0, off=RETURN_0 - 6, imm=17),    # 5  nor UDP
        _insn(_LD_ABS_H, imm=20),                        # 6  r0 = flags and fragment offset
        _insn(_AND64_IMM, 0, imm=0x3FFF),                # 7  MF or an offset
        _insn(_JNE_IMM, 0, off=RETURN_0 - 9, imm=0),     # 8  a fragment
        _insn(_LD_ABS_B, imm=14),                        # 9  r0 = version and IHL
        _insn(_AND64_IMM, 0, imm=0x0F),                  # 10
        _insn(_LSH64_IMM, 0, imm=2),                     # 11 r0 = IP header length
        _insn(_MOV64_REG, 8, 0),                         # 12 r8 = it
        _insn(_LD_IND_H, 0, 8, imm=14),                  # 13 r0 = source port
        _insn(_MOV64_REG, 9, 0),                         # 14 r9 = it
        _insn(_LD_IND_H, 0, 8, imm=16),                  # 15 r0 = destination port
        _insn(_XOR64_REG, 0, 9),                         # 16 r0 = sport ^ dport
        _insn(_MUL32_IMM, 0, imm=GOLDEN),                # 17 r0 = r0 * GOLDEN mod 2**32
        _insn(_RSH32_IMM, 0, imm=16),                    # 18 r0 >>= 16 (the kernel takes it modulo the queues)
        _insn(_EXIT),                                    # 19
        _insn(_MOV64_IMM, 0, imm=0),                     # 20 RETURN_0
        _insn(_EXIT),                                    # 21
    ]
    return b"".join(prog)


def load_steering_program():
    """Load the steering program with ``bpf(BPF_PROG_LOAD)``; returns its file descriptor.

    Raises OSError with the verifier's log when the kernel refuses it (no libbpf:
    the syscall takes a plain attribute block)."""
    code = steering_instructions()
    insns = ctypes.create_string_buffer(code, len(code))
    license = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(_LOG_SIZE)
    attr = ctypes.create_string_buffer(_BPF_ATTR_SIZE)
    struct.pack_into("<IIQQIIQ", attr, 0, _BPF_PROG_TYPE_SOCKET_FILTER, len(code) // _INSN.size,
                     ctypes.addressof(insns), ctypes.addressof(license), 1, _LOG_SIZE, ctypes.addressof(log))
    attr[48:48 + len(b"shoal_steer")] = b"shoal_steer"
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    fd = libc.syscall(ctypes.c_long(_SYS_BPF), ctypes.c_long(_BPF_PROG_LOAD), attr, ctypes.c_uint(_BPF_ATTR_SIZE))
    if fd < 0:
        err = ctypes.get_errno()
        detail = log.value.decode(errors="replace").strip()
        raise OSError(err, f"loading the TAP steering program: {os.strerror(err)}" + (f"\n{detail}" if detail else ""))
    return fd
