"""Ingest: bring a dataset onto the worker and read it as people ship it.

`fetch` (transport, checksums, the download and extraction cache entries), `extract` (the hardened
archive extractor), `locking` (the one `flock` context manager), `errors`, and the dataset's folder
structure: `layout` (detection), `files` (names and file lists), `mapping` (label files), `explain`
(what an unusable dataset's error shows). Library modules: the download and predict stages use them.
"""
