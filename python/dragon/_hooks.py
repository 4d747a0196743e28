# SPDX-License-Identifier: MIT
"""Patches for stdlib modules that a program may never import (managers, shared_memory):
applied right after the module's own code runs, so that `import dragon` does not import them."""
import importlib.machinery
import sys
import threading

_pending = {}  # module name -> patch(module)
_lock = threading.Lock()


def after_import(name, patch):
    """Runs patch(module) once `name` is imported: now if it is already."""
    module = sys.modules.get(name)
    if module is not None:
        patch(module)
        return
    with _lock:
        _pending[name] = patch
        if _Finder not in sys.meta_path:
            sys.meta_path.insert(0, _Finder)


# A loader is any object with create_module and exec_module: no importlib.abc base, whose import
# brings importlib.resources, pathlib and urllib into every process (and every forked child's
# memory).
class _PatchingLoader:
    def __init__(self, loader, patch):
        self._loader = loader
        self._patch = patch

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        self._patch(module)

    def __getattr__(self, name):  # get_source, is_package...: the real loader's
        return getattr(self._loader, name)


class _Finder:
    @staticmethod
    def find_spec(name, path=None, target=None):
        with _lock:
            patch = _pending.pop(name, None)
        if patch is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _PatchingLoader(spec.loader, patch)
        return spec

    @staticmethod
    def invalidate_caches():
        pass
