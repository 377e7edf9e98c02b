"""Data protection: the audit trail, erasure by recipient, payload sealing, retention.

Each module has one job: :mod:`audit` (the events and their wire form), :mod:`erasure`
(recipient hashes and what an erasure answers), :mod:`sealing` (AES-GCM at rest). The
brokers write and read what these modules define; nothing here talks to Redis or SQLite.
"""
