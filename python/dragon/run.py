# SPDX-License-Identifier: MIT
"""``python3 -m dragon.run SCRIPT [ARGS]``: runs SCRIPT as ``__main__`` with the dragon start
method, the way ``python3 SCRIPT`` would. The ``dragon`` launcher runs Python scripts so."""
import builtins
import importlib.machinery
import multiprocessing.context as mpcontext
import os
import runpy
import sys
import types
import zipfile

import dragon  # noqa: F401  (registers the start method)


def main():
    if len(sys.argv) < 2:
        sys.stderr.write("usage: python3 -m dragon.run SCRIPT [ARGS...]\n")
        sys.exit(2)
    script = sys.argv[1]
    if not os.path.exists(script):
        sys.stderr.write("dragon: can't open file %r: No such file or directory\n" % script)
        sys.exit(2)
    # "dragon" becomes the default start method; the script may still choose one itself
    # (set_start_method("dragon") included), as it could under plain python3.
    mpcontext._default_context._default_context = mpcontext._concrete_contexts["dragon"]
    sys.argv = sys.argv[1:]
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    if not os.path.isfile(script) or zipfile.is_zipfile(script) or script.endswith(".pyc"):
        runpy.run_path(script, run_name="__main__")  # a directory, a zip, compiled code
        return
    script = os.path.abspath(script)  # as python3 sets __main__.__file__
    # The script's module is __main__ from here on, as under python3: runpy.run_path would
    # put this module back when the top level returns, and a thread still running, an atexit
    # function or a Pool's worker handler could no longer pickle functions of __main__.
    main_module = types.ModuleType("__main__")
    main_module.__file__ = script
    main_module.__builtins__ = builtins
    main_module.__loader__ = importlib.machinery.SourceFileLoader("__main__", script)
    main_module.__cached__ = None
    sys.modules["__main__"] = main_module
    with open(script, "rb") as f:
        code = compile(f.read(), script, "exec")
    exec(code, main_module.__dict__)


if __name__ == "__main__":
    main()
