"""shoal's user-space TCP/IP stack (the `--network-stack native` implementation)."""
