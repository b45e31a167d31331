"""Builds a user makes, each checked in a fresh folder.

The test builds (scripts/test.sh) are Debug and RelWithDebInfo trees on a
machine with every test package installed; a build that only they exercise
can break unnoticed. Each test here configures a new tree in a temporary
folder and builds it:

- test_release_build_with_werror: a plain `-DCMAKE_BUILD_TYPE=Release` tree
  (GCC's -O3 analyses more than -O0/-O2 and warns about more) with warnings
  as errors and the tests included builds without a warning.
- test_make_build_needs_no_test_packages: the commands `make build` (and so
  `make run`) runs build the server while cmocka is hidden from pkg-config,
  as on a machine where scripts/deps.sh installed only the run-time
  packages; no test-only program or library is even looked up. Configuring
  with the tests on fails under the same conditions, which shows cmocka
  really was hidden.

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


def pkg_config_dirs():
    """The folders pkg-config searches, in its order."""
    dirs = [d for d in os.environ.get("PKG_CONFIG_PATH", "").split(":") if d]
    libdir = os.environ.get("PKG_CONFIG_LIBDIR")
    if libdir is None:
        rc, out = sh(["pkg-config", "--variable", "pc_path", "pkg-config"])
        assert rc == 0, "pkg-config --variable pc_path failed:\n" + out
        libdir = out.strip()
    return dirs + [d for d in libdir.split(":") if d]


def env_without_cmocka(tmp):
    """An environment in which pkg-config finds every package it finds now
    except cmocka (links to all the other .pc files in one folder)."""
    pc = os.path.join(tmp, "pkgconfig")
    os.mkdir(pc)
    for d in pkg_config_dirs():
        if not os.path.isdir(d):
            continue
        for name in sorted(os.listdir(d)):
            dst = os.path.join(pc, name)
            if name.endswith(".pc") and name != "cmocka.pc" and not os.path.lexists(dst):
                os.symlink(os.path.join(d, name), dst)
    env = {k: v for k, v in os.environ.items()
           if k not in ("CMAKE_PREFIX_PATH", "CMAKE_FRAMEWORK_PATH", "CMAKE_APPBUNDLE_PATH",
                        "CMAKE_FLAGS", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    env["PKG_CONFIG_LIBDIR"] = pc
    env["PKG_CONFIG_PATH"] = ""
    rc, out = sh(["pkg-config", "--exists", "cmocka"], env)
    assert rc != 0, "cmocka is still visible to pkg-config"
    return env


def make_build_commands(build):
    """The cmake commands `make build` runs, with its tree in `build`."""
    p = subprocess.run(["make", "-n", "-C", SOURCE, "build", "BUILD=" + build, "JOBS=" + JOBS],
                       env={k: v for k, v in os.environ.items()
                            if k not in ("CMAKE_FLAGS", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")},
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    out = p.stdout.decode(errors="replace")
    assert p.returncode == 0, "make -n build failed:\n" + out
    cmds = [line.strip() for line in out.splitlines() if line.strip().startswith("cmake ")]
    assert len(cmds) >= 2, "make -n build shows no configure and build step:\n" + out
    return cmds


def test_make_build_needs_no_test_packages():
    with Scratch() as tmp:
        env = env_without_cmocka(tmp)
        build = os.path.join(tmp, "make")
        for cmd in make_build_commands(build):
            # The Makefile sends the configure output to /dev/null; keep it.
            cmd = cmd.replace(">/dev/null", "")
            p = subprocess.run(cmd, shell=True, cwd=SOURCE, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, timeout=TIMEOUT)
            out = p.stdout.decode(errors="replace")
            assert p.returncode == 0, "without cmocka, `%s` failed:\n%s" % (cmd, tail(out))
        assert os.access(os.path.join(build, "release", "chatd"), os.X_OK), \
            "make build made no chatd"
        with open(os.path.join(build, "release", "CMakeCache.txt")) as f:
            cache = f.read()
        for name in ("CMOCKA", "PYTHON3", "NODE"):
            found = [line for line in cache.splitlines() if line.startswith(name)]
            assert not found, "a server-only build looked up %s: %s" % (name, found)

        # The same conditions with the tests on: cmocka is required, and missing.
        rc, out = configure(os.path.join(tmp, "tests-on"), ["-DCHATD_TESTS=ON"], env)
        assert rc != 0, "configuring the tests succeeded without cmocka (was it hidden?)"
        assert "cmocka" in out, "configure failed, but not for cmocka:\n" + tail(out)


if __name__ == "__main__":
    run([test_release_build_with_werror, test_make_build_needs_no_test_packages])
