#!/usr/bin/python3
"""Check that chatd's sources keep to their layers (DESIGN.md, "Layers").

Usage:
    check_layers.py SRC_DIR     check the tree under SRC_DIR (chatd's src/)
    check_layers.py --self-test prove on small made-up trees that the check
                                accepts a good tree and rejects each kind
                                of bad one

Every `#include "..."` in SRC_DIR/**/*.c and *.h is an edge from the file to
the file it names. A file belongs to the layer of its first folder under
SRC_DIR (so store/sqlite/*.c is store). The tree fails (exit 1) when:
  - an include goes up the table (a lower layer uses a higher one);
  - an include goes sideways: between two folders of the same layer, unless
    MAY_ALSO_USE below allows that pair (the codecs ws, http and auth are
    independent of each other; net and store never meet);
  - two modules include each other, directly or around a longer loop (a
    module is a file pair: x.c and x.h are one module, x.c including x.h is
    not a cycle);
  - a file lies directly in SRC_DIR other than main.c, or in a folder the
    table does not name.
System includes (<...>) are ignored, and so are includes inside comments.
A layer whose folder does not exist yet is simply empty.
On success it prints the layer graph and "no upward or sideways include;
no cycle". Standard library only: it runs with Debian's /usr/bin/python3.
"""

import os
import re
import subprocess
import sys
import tempfile

# The layer table, lowest first: folder under src/ -> layer. Edit here when
# a folder is added; DESIGN.md's table is the reference.
LAYERS = {
    "util": 0,  # buffers, queues, hashes, arrays, logging, clocks (libc only)
    "conf": 0,  # the configuration struct and its parser
    "ws": 1,  # pure codecs, independent of one another
    "http": 1,
    "auth": 1,
    "net": 2,  # workers, inboxes, connections, the outbound HTTP client
    "store": 2,  # the storage interface and its engines (store/<engine>/)
    "bus": 3,
    "assistant": 4,
    "hub": 5,
    "main.c": 6,  # configuration, construction, wiring, shutdown order
}

# Sideways uses that are allowed, as (user, used) folder pairs. The
# configuration parser reads files and text with util's helpers; util itself
# stays libc-only, so the reverse is not allowed.
MAY_ALSO_USE = {
    ("conf", "util"),
}

INCLUDE_RE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"([^"]+)"', re.M)


def strip_comments(text):
    """Blank out /* */ and // comments, keeping string and character
    literals and every newline (so an include in a comment is not seen)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("/*", i):
            end = text.find("*/", i + 2)
            end = n if end < 0 else end + 2
            out.append(re.sub(r"[^\n]", " ", text[i:end]))
            i = end
        elif text.startswith("//", i):
            end = text.find("\n", i)
            end = n if end < 0 else end
            i = end
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            out.append(text[i : j + 1])
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def group_of(rel):
    """The layer-table key of a path relative to src/ ('util', 'main.c'),
    or None for a file directly in src/ that is not main.c."""
    parts = rel.split("/")
    if len(parts) == 1:
        return "main.c" if rel == "main.c" else None
    return parts[0]


def module_of(rel):
    """x.c and x.h are one module: the path without its extension."""
    return os.path.splitext(rel)[0]


def scan(src):
    """Map each source file (relative to src) to its quoted includes,
    resolved to paths relative to src when they name a file of the tree."""
    files = []
    for root, dirs, names in os.walk(src):
        dirs.sort()
        for name in sorted(names):
            if name.endswith((".c", ".h")):
                path = os.path.join(root, name)
                files.append(os.path.relpath(path, src).replace(os.sep, "/"))
    edges = {}
    for rel in files:
        with open(os.path.join(src, rel), encoding="utf-8", errors="replace") as f:
            text = strip_comments(f.read())
        here = os.path.dirname(rel)
        targets = []
        for inc in INCLUDE_RE.findall(text):
            # As the compiler does for quotes: beside the file first, then
            # from src/ (the include path of chatd_core).
            for base in (here, ""):
                cand = os.path.normpath(os.path.join(base, inc)).replace(os.sep, "/")
                if not cand.startswith("../") and os.path.isfile(os.path.join(src, cand)):
                    targets.append(cand)
                    break
            else:
                targets.append(None)  # not a file of the tree: generated or outside
        edges[rel] = targets
    return files, edges


def describe(group):
    return "layer %d %s" % (LAYERS[group], group)


def find_cycles(graph):
    """Strongly connected components of more than one node (Tarjan,
    iterative), each returned as a list of nodes in a cycle order."""
    index, low, on_stack, stack, comps = {}, {}, set(), [], []
    counter = [0]
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, it = work[-1]
            advanced = False
            for nxt in it:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter[0]
                    counter[0] += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                if len(comp) > 1:
                    comps.append(cycle_through(sorted(comp), graph))
    return comps


def all_cycles(graph, limit=100):
    """Cycles enough to explain every tangle: find the strongly connected
    components, take a short cycle through each, cut the edge that closes
    it, and repeat until none is left. So when conn includes both routes and
    server and each includes conn back, both loops are reported, not one."""
    graph = {k: set(v) for k, v in graph.items()}
    found = []
    while len(found) < limit:
        cycles = find_cycles(graph)
        if not cycles:
            break
        for cyc in cycles:
            found.append(cyc)
            graph[cyc[-2]].discard(cyc[-1])
    return found


def cycle_through(comp, graph):
    """One cycle inside a strongly connected component, as a node list
    starting and ending at its first node (breadth-first, so it is short)."""
    members = set(comp)
    start = comp[0]
    prev = {start: None}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(graph[node]):
            if nxt == start:
                path = [node]
                while prev[path[-1]] is not None:
                    path.append(prev[path[-1]])
                return list(reversed(path)) + [start]
            if nxt in members and nxt not in prev:
                prev[nxt] = node
                queue.append(nxt)
    return comp + [start]


def check(src, out=sys.stdout):
    """Check the tree under src; print the report; return 0 or 1."""
    if not os.path.isdir(src):
        print("check_layers: %s is not a directory" % src, file=out)
        return 1
    files, edges = scan(src)
    problems = []
    counts = {g: 0 for g in LAYERS}
    uses = {g: set() for g in LAYERS}
    for rel in files:
        g = group_of(rel)
        if g is None:
            problems.append("src/%s: file outside any layer folder" % rel)
        elif g not in LAYERS:
            problems.append("src/%s: folder %s/ is not in the layer table" % (rel, g))
        else:
            counts[g] += 1

    # Layer edges, and the module graph for cycles.
    mod_graph = {}
    mod_edge_files = {}
    for rel in files:
        g = group_of(rel)
        m = module_of(rel)
        mod_graph.setdefault(m, set())
        for target in edges[rel]:
            if target is None:
                continue
            tg = group_of(target)
            tm = module_of(target)
            if tm != m:
                mod_graph[m].add(tm)
                mod_graph.setdefault(tm, set())
                mod_edge_files.setdefault((m, tm), (rel, target))
            if g not in LAYERS or tg not in LAYERS or tg == g:
                continue  # stray files are reported above; one folder is one group
            uses[g].add(tg)
            if LAYERS[tg] > LAYERS[g]:
                kind = "upward include"
            elif LAYERS[tg] == LAYERS[g] and (g, tg) not in MAY_ALSO_USE:
                kind = "sideways include"
            else:
                continue
            problems.append(
                "src/%s -> src/%s (%s -> %s): %s" % (rel, target, describe(g), describe(tg), kind)
            )

    for cyc in all_cycles(mod_graph):
        hops = []
        for a, b in zip(cyc, cyc[1:]):
            f, t = mod_edge_files[(a, b)]
            hops.append("src/%s -> src/%s" % (f, t))
        problems.append("include cycle between modules %s: %s" % (" / ".join(cyc[:-1]), "; ".join(hops)))

    print("layer graph of %s:" % src, file=out)
    for layer in sorted(set(LAYERS.values())):
        for g in sorted(k for k, v in LAYERS.items() if v == layer):
            used = ", ".join(sorted(uses[g], key=lambda u: (LAYERS[u], u))) or "-"
            print("  %d %-10s %3d files  uses: %s" % (layer, g, counts[g], used), file=out)
    if problems:
        for p in problems:
            print(p, file=out)
        print("%d layer problem%s" % (len(problems), "" if len(problems) == 1 else "s"), file=out)
        return 1
    print("no upward or sideways include; no cycle", file=out)
    return 0


# ---- self-test ---------------------------------------------------------------

GOOD_TREE = {
    "util/log.h": "#include <stdio.h>\n",
    "util/log.c": '#include "util/log.h"\n#include "log.h"\n',
    "util/list.h": "",
    "util/fifo.h": '#include "util/list.h"\n',
    "conf/config.h": '#include "util/list.h"\n',
    "conf/config.c": '#include "conf/config.h"\n#include "util/log.h"\n',
    "ws/frame.h": '#include "util/list.h"\n',
    "ws/frame.c": '#include "ws/frame.h"\n/* #include "hub/hub.h" (a comment) */\n'
    '// #include "net/conn.h"\nstatic const char *s = "#include \\"hub/hub.h\\"";\n',
    "http/request.h": "",
    "http/request.c": '#include "http/request.h"\n#include "util/log.h"\n#include <http_parser.h>\n',
    "auth/jwt.c": '#include "util/log.h"\n',
    "net/conn.h": '#include "ws/frame.h"\n#include "http/request.h"\n',
    "net/conn.c": '#include "net/conn.h"\n#include "net/server.h"\n#include "conf/config.h"\n',
    "net/server.h": '#include "util/fifo.h"\n',
    "net/server.c": '#include "net/server.h"\n',
    "store/store.h": "",
    "store/sqlite/sqlite.c": '#include "store/store.h"\n#include "util/log.h"\n',
    "bus/bus.h": '#include "net/server.h"\n#include "store/store.h"\n',
    "assistant/openai.c": '#include "bus/bus.h"\n#include "net/conn.h"\n',
    "hub/hub.h": '#include "bus/bus.h"\n',
    "hub/hub.c": '#include "hub/hub.h"\n#include "hub/chat.h"\n/*\n  #include "main.c"\n*/\n',
    "hub/chat.h": "",
    "hub/chat.c": '#include "hub/chat.h"\n#include "store/store.h"\n',
    "main.c": '#include "hub/hub.h"\n#include "net/server.h"\n#include "conf/config.h"\n'
    '#include "web_assets.h"\n',
}

# Each bad tree: (name, changes to the good tree, what the report must say).
BAD_TREES = [
    (
        "upward include",
        {"util/log.c": '#include "util/log.h"\n#include "hub/hub.h"\n'},
        "src/util/log.c -> src/hub/hub.h (layer 0 util -> layer 5 hub): upward include",
    ),
    (
        "sideways include between net and store",
        {"net/server.c": '#include "net/server.h"\n#include "store/store.h"\n'},
        "src/net/server.c -> src/store/store.h (layer 2 net -> layer 2 store): sideways include",
    ),
    (
        "sideways include from a store engine to net",
        {"store/sqlite/sqlite.c": '#include "store/store.h"\n#include "net/conn.h"\n'},
        "src/store/sqlite/sqlite.c -> src/net/conn.h (layer 2 store -> layer 2 net)",
    ),
    (
        "sideways include between codecs",
        {"ws/frame.c": '#include "ws/frame.h"\n#include "http/request.h"\n'},
        "src/ws/frame.c -> src/http/request.h (layer 1 ws -> layer 1 http): sideways include",
    ),
    (
        "util using conf",
        {"util/fifo.h": '#include "util/list.h"\n#include "conf/config.h"\n'},
        "src/util/fifo.h -> src/conf/config.h (layer 0 util -> layer 0 conf): sideways include",
    ),
    (
        "two headers including each other",
        {"hub/a.h": '#include "hub/b.h"\n', "hub/b.h": '#include "hub/a.h"\n'},
        "include cycle between modules hub/a / hub/b: src/hub/a.h -> src/hub/b.h; "
        "src/hub/b.h -> src/hub/a.h",
    ),
    (
        "two modules including each other's header",
        {
            "net/conn.c": '#include "net/conn.h"\n#include "net/server.h"\n',
            "net/server.c": '#include "net/server.h"\n#include "net/conn.h"\n',
        },
        "include cycle between modules net/conn / net/server",
    ),
    (
        "a stray file in src/",
        {"server.c": '#include "util/log.h"\n'},
        "src/server.c: file outside any layer folder",
    ),
    (
        "a folder outside the table",
        {"misc/x.c": ""},
        "src/misc/x.c: folder misc/ is not in the layer table",
    ),
]


def write_tree(root, tree):
    for rel, text in tree.items():
        path = os.path.join(root, "src", rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    return os.path.join(root, "src")


def run_cli(src):
    """Run this script on src as ctest would; (exit code, output)."""
    r = subprocess.run(
        [sys.executable, os.path.abspath(__file__), src],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        universal_newlines=True,
    )
    return r.returncode, r.stdout


def self_test():
    failures = []
    cases = [("good tree", GOOD_TREE, 0, "no upward or sideways include; no cycle")]
    cases.append(("tree before the restructure: empty layers", {"main.c": ""}, 0, "no cycle"))
    for name, change, want in BAD_TREES:
        tree = dict(GOOD_TREE)
        tree.update(change)
        cases.append((name, tree, 1, want))
    for name, tree, want_rc, want_text in cases:
        with tempfile.TemporaryDirectory(prefix="chatd-layers-") as tmp:
            src = write_tree(tmp, tree)
            rc, output = run_cli(src)
        ok = rc == want_rc and want_text in output
        if want_rc == 1:
            # A rejected tree names its problem, and only its problem: the
            # good tree's edges must not show up as false alarms.
            ok = ok and output.splitlines()[-1] == "1 layer problem"
        print("%s: %s" % ("ok  " if ok else "FAIL", name))
        if not ok:
            failures.append(name)
            print("  want exit %d and %r; got exit %d:" % (want_rc, want_text, rc))
            print("  " + output.replace("\n", "\n  "))
    # The check must also refuse to pass a path that is not a tree.
    with tempfile.TemporaryDirectory(prefix="chatd-layers-") as tmp:
        rc, output = run_cli(os.path.join(tmp, "nothing"))
        ok = rc == 1
        print("%s: missing source folder" % ("ok  " if ok else "FAIL"))
        if not ok:
            failures.append("missing source folder")
    if failures:
        print("self-test: %d of %d cases FAILED" % (len(failures), len(cases) + 1))
        return 1
    print("self-test: all %d cases passed" % (len(cases) + 1))
    return 0


def main(argv):
    if len(argv) == 2 and argv[1] == "--self-test":
        return self_test()
    if len(argv) != 2 or argv[1].startswith("-"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    return check(argv[1])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
