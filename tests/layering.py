#!/usr/bin/python3
"""layering.py — the tree's layering, checked over its #include graph.

Run it from anywhere (``python3 tests/layering.py [ROOT]``); ctest runs it
as ``layering``.  It reads every .c and .h file of the libraries and of
cmd/, takes each quoted ``#include "dir/file.h"`` as an edge, and checks:

1. No library includes a library above it.  The layers (docs/DESIGN.md §2):
   common, websocket <- tunnel <- controller-stub;  tunnel, websocket <-
   relay;  common, websocket <- client;  cmd on top.  proto/ is the
   generated contract, usable from tunnel up.  In particular no file of
   relay/ includes controller-stub/: cmd/relay composes the two.
2. Inside each library there is no include cycle.  The nodes are modules,
   a module being the .c and .h files of one name (relay/conn.c and
   relay/conn.h are the module relay/conn); module a depends on module b
   when a file of a includes b's header.  A cycle means the library's
   parts cannot be understood, tested or changed one at a time.

Exit status 0 when both hold; otherwise every violation is printed (with
the file and line, or the cycle's path) and the status is 1.
"""

import os
import re
import sys

# What each directory may include besides itself.
ALLOWED = {
    "common": set(),
    "websocket": {"common"},
    "tunnel": {"common", "websocket", "proto"},
    "controller-stub": {"common", "websocket", "tunnel", "proto"},
    "relay": {"common", "websocket", "tunnel", "proto"},
    "client": {"common", "websocket"},
    "cmd": {"common", "websocket", "tunnel", "proto", "controller-stub", "relay", "client", "cmd"},
}
# Libraries whose modules must not include each other in a cycle.
LIBRARIES = ("common", "websocket", "tunnel", "controller-stub", "relay", "client")

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')


def sources(root, top):
    for dirpath, dirnames, filenames in os.walk(os.path.join(root, top)):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith((".c", ".h")):
                yield os.path.join(dirpath, name)


def includes(path):
    """(line number, included path) for every quoted include of a file."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            m = INCLUDE.match(line)
            if m:
                yield n, m.group(1)


def module_of(relpath):
    """relay/conn.c -> relay/conn (the .c and .h of one name are one node)."""
    return os.path.splitext(relpath)[0]


def find_cycle(graph):
    """A cycle of the directed graph as a list of nodes, or None."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = {n: WHITE for n in graph}
    stack = []

    def visit(n):
        colour[n] = GREY
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if colour.get(m, WHITE) == GREY:
                return stack[stack.index(m):] + [m]
            if colour.get(m, WHITE) == WHITE:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        colour[n] = BLACK
        return None

    for n in sorted(graph):
        if colour[n] == WHITE:
            found = visit(n)
            if found:
                return found
    return None


def check(root):
    problems = []
    graphs = {lib: {} for lib in LIBRARIES}
    for top in ALLOWED:
        for path in sources(root, top):
            rel = os.path.relpath(path, root)
            for line, inc in includes(path):
                target = inc.split("/", 1)[0] if "/" in inc else None
                if target is None:
                    problems.append("%s:%d: #include \"%s\" names no directory "
                                    "(write \"%s/...\")" % (rel, line, inc, top))
                    continue
                if target != top and target not in ALLOWED[top]:
                    problems.append("%s:%d: %s may not include %s (\"%s\")"
                                    % (rel, line, top, target, inc))
                if top in graphs and target == top:
                    a, b = module_of(rel), module_of(inc)
                    graphs[top].setdefault(a, set())
                    graphs[top].setdefault(b, set())
                    if a != b:
                        graphs[top][a].add(b)
    for lib, graph in graphs.items():
        cycle = find_cycle(graph)
        if cycle:
            problems.append("include cycle in %s/: %s" % (lib, " -> ".join(cycle)))
    return problems, graphs


def self_test():
    """The checker on small made-up trees: it must see what it is for."""
    import tempfile

    def tree(files):
        d = tempfile.mkdtemp(prefix="layering-")
        for name, text in files.items():
            os.makedirs(os.path.join(d, os.path.dirname(name)), exist_ok=True)
            with open(os.path.join(d, name), "w") as f:
                f.write(text)
        return d

    good = tree({"relay/a.c": '#include "relay/b.h"\n#include "tunnel/tunnel.h"\n',
                 "relay/b.h": '#include "common/common.h"\n', "relay/b.c": '#include "relay/b.h"\n'})
    assert check(good)[0] == [], check(good)[0]
    cyc = tree({"relay/a.c": '#include "relay/b.h"\n', "relay/b.c": '#include "relay/c.h"\n',
                "relay/c.c": '#include "relay/a.h"\n', "relay/a.h": ""})
    p = check(cyc)[0]
    assert p == ["include cycle in relay/: relay/a -> relay/b -> relay/c -> relay/a"], p
    up = tree({"relay/x.c": '#include "controller-stub/controller.h"\n',
               "tunnel/y.h": '#include "relay/relay.h"\n'})
    p = check(up)[0]
    assert len(p) == 2 and any("relay may not include controller-stub" in x for x in p) and \
        any("tunnel may not include relay" in x for x in p), p
    print("layering: self-test ok")
    return 0


def main(argv):
    if len(argv) > 1 and argv[1] == "--self-test":
        return self_test()
    root = argv[1] if len(argv) > 1 else os.path.join(os.path.dirname(__file__), "..")
    root = os.path.abspath(root)
    problems, graphs = check(root)
    for p in problems:
        print(p)
    nmod = sum(len(g) for g in graphs.values())
    nedge = sum(len(e) for g in graphs.values() for e in g.values())
    if problems:
        print("layering: %d problem(s)" % len(problems))
        return 1
    print("layering: ok (%d modules, %d edges inside libraries, no cycle, no upward include)"
          % (nmod, nedge))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
