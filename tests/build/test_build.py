"""Builds a user makes, each checked in a fresh folder.

The test builds (scripts/test.sh) are Debug and RelWithDebInfo trees on a
machine with every test package installed; a build that only they exercise
can break unnoticed. Each test here configures a new tree in a temporary
folder and builds it:

- test_release_build_with_werror: a plain `-DCMAKE_BUILD_TYPE=Release` tree
  (GCC's -O3 analyses more than -O0/-O2 and warns about more) with warnings
  as errors and the tests included builds without a warning.

ctest runs this file in the plain test build only (not once per sanitizer)
and alone: it compiles with -j2 and would slow the timing-sensitive tests
beside it. Environment: CHATD_SOURCE_DIR, CHATD_CMAKE (the cmake program)
and CHATD_CC (the C compiler of the build that runs the test).
"""
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from harness import run  # noqa: E402

SOURCE = os.environ.get("CHATD_SOURCE_DIR",
                        os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
CMAKE = os.environ.get("CHATD_CMAKE", "cmake")
CC = os.environ.get("CHATD_CC", "")
JOBS = "2"
TIMEOUT = 900


def sh(cmd, env=None):
    """Run cmd; (exit status, stdout and stderr together)."""
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=TIMEOUT)
    return p.returncode, p.stdout.decode(errors="replace")


def configure(build, flags, env=None):
    cmd = [CMAKE, "-S", SOURCE, "-B", build] + flags
    if CC:
        cmd.append("-DCMAKE_C_COMPILER=" + CC)
    return sh(cmd, env)


def tail(text, n=60):
    return "\n".join(text.splitlines()[-n:])


class Scratch:
    """A temporary folder, removed on exit."""

    def __enter__(self):
        self.path = tempfile.mkdtemp(prefix="chatd-build-test-")
        return self.path

    def __exit__(self, *exc):
        shutil.rmtree(self.path, ignore_errors=True)
        return False


def test_release_build_with_werror():
    with Scratch() as tmp:
        build = os.path.join(tmp, "release")
        rc, out = configure(build, ["-DCMAKE_BUILD_TYPE=Release", "-DCHATD_WERROR=ON"])
        assert rc == 0, "Release configure failed:\n" + tail(out)
        rc, out = sh([CMAKE, "--build", build, "-j", JOBS])
        assert rc == 0, "Release build with -Werror failed:\n" + tail(out)
        assert "warning:" not in out, "Release build printed warnings:\n" + tail(out)


if __name__ == "__main__":
    run([test_release_build_with_werror])
