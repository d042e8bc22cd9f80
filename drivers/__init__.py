"""shoal.drivers: network devices behind one small interface (see `shoal.drivers.base`).

- `base`: the device/queue interface (``rx_burst``, ``tx_burst``, ``fileno``, ``mac``,
  ``mtu``, ``offloads``) and `DevicePoller`, which lets a shard's reactor drive a queue.
- `tap`: a Linux TAP device (the kernel is the peer).
- `virtual`: virtual wires joining two stacks, in one process or across processes.
- `faults`, `pcap`: wrappers around any device: seeded fault injection, pcap capture.
"""
