"""shoal's TCP: a sans-I/O connection state machine and its helpers (RFC 9293).

Nothing here reads a clock, draws randomness or touches a socket or device: every
input carries ``now`` (seconds, a float from the owner's clock), secrets come from
the owner, and output is data (segments to send, deadlines, events). See docs/tcp.md.

Modules: `seq` (sequence-number arithmetic), `connection` (the state machine),
`listener` (passive opens, backlog, SYN cookies), `rtt` (RFC 6298), `congestion`
(NewReno, CUBIC), `sack` (RFC 2018 scoreboard, RFC 6675 recovery), `isn` (RFC 6528).
"""
