"""TensorFlow's native INFO notes kept out of stderr while it is imported.

Importing TensorFlow writes INFO notes (oneDNN custom operations, on CPUs with AVX-512 VNNI) to
stderr through absl before its logging is initialised, where TF_CPP_MIN_LOG_LEVEL does not reach
them; Airflow's task log shows stderr as red ERROR lines. `install()` puts a finder on
`sys.meta_path` that runs the first `import tensorflow` with file descriptor 2 captured, then
writes back every captured line that is not such a note. Nothing is imported before that import
happens, so the DAG file stays light. TF_CPP_MIN_LOG_LEVEL=0 keeps the notes.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile
from contextlib import contextmanager

# absl's INFO lines ("I1204 20:27:12.345 1234 port.cc:153] ...") and its note that they went to stderr.
NOTE = re.compile(rb"I\d{4} \S+ +\d+ \S+\] .*|WARNING: All log messages before absl::InitializeLog\(\) .*")


@contextmanager
def native_notes_dropped():
    """Capture file descriptor 2 for the block; write back the lines that are not absl INFO notes."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().splitlines(keepends=True) if not NOTE.fullmatch(line.rstrip())]
            if kept:
                os.write(2, b"".join(kept))


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _TensorFlowFinder)]
        with native_notes_dropped():
            self.loader.exec_module(module)


class _TensorFlowFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # the real finders locate it
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)  # until the import runs (find_spec alone does not import)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def install() -> None:
    """Drop the notes of the first `import tensorflow` (unless already imported or asked for)."""
    if "tensorflow" in sys.modules or os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") in ("", "0"):
        return
    if not any(isinstance(finder, _TensorFlowFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _TensorFlowFinder())
