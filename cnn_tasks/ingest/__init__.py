"""Ingest: bring a dataset onto the worker and read it as people ship it.

Fetching: `fetch` (transport, checksums, the download and extraction cache entries), `extract` (the
hardened archive extractor) with `members` (zip/tar members, their names) and `limits` (bomb limits),
`locking` (the one `flock` context manager), `errors`. Reading the dataset's folder structure:
`layout` (detection) finds a `dataset.Layout`, with `files` (names, listings, class file lists),
`mapping` (label files) and `explain` (what an unusable dataset's error shows). Library modules:
the download and predict stages use them; nothing here imports a stage.
"""
