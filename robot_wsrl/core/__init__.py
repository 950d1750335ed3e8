"""Shared by every side: specs, files, durable records, process lifetime, the driver protocol."""
