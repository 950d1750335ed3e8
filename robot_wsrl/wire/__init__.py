"""What crosses the network: records, sockets, keys, signatures, the spool."""
