"""Packet sources: live eBPF capture (``ebpf``) and capture files (``pcap``).

Keep this module free of imports: ``ebpf`` imports bcc lazily, and reading a pcap file
must work on a machine without bcc.
"""
