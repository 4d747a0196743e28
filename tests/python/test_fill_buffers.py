# SPDX-License-Identifier: MIT
"""Nothing a program does may deadlock only under the launcher: fill_buffers_app.py, whose work
fills every bounded buffer on its way several times over, runs both as `dragon app.py` and as
`python3 app.py`, and must finish with every result and every output line."""
import collections
import os
import subprocess
import sys
import unittest

from test_dragon_mp import private_runtime_env

APP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fill_buffers_app.py")
STAGES = ["stage executor 20000", "stage pipe 16000", "stage queue 8 50000",
          "stage queue 0 50000", "stage pool 20000", "stage output 60000"]


class FillBuffersTest(unittest.TestCase):
    def check(self, r):
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        lines = r.stdout.splitlines()
        self.assertEqual([x for x in lines if x.startswith("stage ")], STAGES)
        # Each writer's 20,000 lines arrive whole, once and in its order.
        by_tag = collections.defaultdict(list)
        for x in lines:
            if x.startswith("line"):
                tag, i = x.split()
                by_tag[tag].append(int(i))
        self.assertEqual(sorted(by_tag), ["line0", "line1", "line2"])
        for tag, got in by_tag.items():
            self.assertEqual(got, list(range(20_000)), tag)

    @unittest.skipUnless(os.environ.get("DRAGON_LAUNCHER"), "needs DRAGON_LAUNCHER")
    def test_under_the_launcher(self):
        env, _ = private_runtime_env()
        self.check(subprocess.run([os.environ["DRAGON_LAUNCHER"], APP], capture_output=True,
                                  text=True, timeout=240, env=env))

    def test_as_a_plain_python_program(self):
        env, _ = private_runtime_env()
        self.check(subprocess.run([sys.executable, APP], capture_output=True, text=True,
                                  timeout=240, env=env))

    def test_as_a_plain_python_program_with_dragon_as_its_default_start_method(self):
        env, _ = private_runtime_env()
        self.check(subprocess.run([sys.executable, APP, "--default"], capture_output=True,
                                  text=True, timeout=240, env=env))


if __name__ == "__main__":
    unittest.main()
