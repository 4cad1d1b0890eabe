"""Parse speed: pybuild's dockerfile_grammar.parse vs the dockerfile-parse package (PyPI).

Both parse the same Dockerfiles in the same process: BuildKit's 33 parser test files (from the
conformance data, when present) plus synthesized real-world-sized files of 100, 200 and 300
lines. Each file is parsed repeatedly after a warm-up, the two tools taking turns; the fastest
run of each per file is reported.
Start-up costs (package import, first parse including Lark's cached-table load) are measured
in fresh interpreters.

    python3 benchmarks/parse/run.py [--repeat N]
"""
from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
CONFORMANCE = Path(os.environ.get("PYBUILD_CONFORMANCE_DIR", REPO.parent / "shared" / "conformance"))


def synthesize(lines: int) -> str:
    """A multi-stage Dockerfile of about ``lines`` lines, shaped like official-image ones:
    mostly long RUN blocks with continuations and comments, ENV/ARG/LABEL, COPY with flags,
    JSON ENTRYPOINT/CMD (no heredocs, which dockerfile-parse does not understand)."""
    out = ["# syntax=docker/dockerfile:1", "# A build of the demo service.", "ARG BASE=debian:bookworm-slim", ""]
    stage = 0
    while len(out) < lines:
        out += [f"FROM ${{BASE}} AS stage{stage}",
                "ARG VERSION=1.2.3",
                'LABEL org.opencontainers.image.title="demo" org.opencontainers.image.version="${VERSION}"',
                f"ENV APP_HOME=/opt/app{stage} PATH=/opt/app{stage}/bin:$PATH LANG=C.UTF-8",
                "ENV GPG_KEY A035C8C19219BA821ECEA86B64E628F8D684696D",
                "",
                "# runtime dependencies",
                "RUN --mount=type=cache,target=/var/cache/apt,sharing=locked set -eux; \\",
                "\tapt-get update; \\",
                "\tapt-get install -y --no-install-recommends \\",
                "\t\tca-certificates \\",
                "\t\tcurl \\",
                "\t\tgnupg \\",
                "\t\tnetbase \\",
                "\t\ttzdata \\",
                "\t; \\",
                "# verify the download",
                "\tcurl -fsSL -o app.tar.xz \"https://example.com/app-${VERSION}.tar.xz\"; \\",
                "\techo \"$APP_SHA256 *app.tar.xz\" | sha256sum -c -; \\",
                "\tmkdir -p \"$APP_HOME\"; \\",
                "\ttar -xJC \"$APP_HOME\" --strip-components=1 -f app.tar.xz; \\",
                "\trm app.tar.xz; \\",
                "\tapt-get purge -y --auto-remove -o APT::AutoRemove::RecommendsImportant=false; \\",
                "\trm -rf /var/lib/apt/lists/*",
                "",
                "WORKDIR $APP_HOME",
                f"COPY --from=stage{max(stage - 1, 0)} --chown=app:app --chmod=0755 /src/bin/ ./bin/",
                "COPY requirements.txt setup.cfg ./",
                "RUN pip install --no-cache-dir -r requirements.txt",
                "EXPOSE 8080/tcp 9090",
                'HEALTHCHECK --interval=30s --timeout=3s CMD curl -f http://localhost:8080/ || exit 1',
                "USER app",
                'ENTRYPOINT ["/opt/app/bin/start", "--config", "/etc/app.conf"]',
                'CMD ["--verbose"]',
                ""]
        stage += 1
    return "\n".join(out[:lines]) + "\n"


def official_style(lines: int) -> str:
    """A Dockerfile of about ``lines`` lines shaped like official language images: a few ENV
    lines, then long RUN blocks with continuations and comments between their lines."""
    out = ["#", "# NOTE: THIS DOCKERFILE IS GENERATED VIA \"apply-templates.sh\"", "#",
           "FROM debian:bookworm-slim", "",
           "# ensure local python is preferred over distribution python",
           "ENV PATH /usr/local/bin:$PATH", "ENV LANG C.UTF-8", ""]
    block = 0
    while True:
        chunk = [f"ENV TOOL{block}_VERSION 3.12.{block}",
                f"ENV TOOL{block}_SHA256 4f9e5a8e2d1c0b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a",
                "",
                "RUN set -eux; \\",
                "\t\\",
                "\tsavedAptMark=\"$(apt-mark showmanual)\"; \\",
                "\tapt-get update; \\",
                "\tapt-get install -y --no-install-recommends \\",
                "\t\tdpkg-dev \\",
                "\t\tgcc \\",
                "\t\tgnupg \\",
                "\t\tlibbz2-dev \\",
                "\t\tlibc6-dev \\",
                "\t\tlibffi-dev \\",
                "\t\tlibssl-dev \\",
                "\t\tmake \\",
                "\t\twget \\",
                "\t\txz-utils \\",
                "\t\tzlib1g-dev \\",
                "\t; \\",
                "\t\\",
                f"\twget -O tool.tar.xz \"https://example.org/ftp/tool/${{TOOL{block}_VERSION}}.tar.xz\"; \\",
                f"\techo \"$TOOL{block}_SHA256 *tool.tar.xz\" | sha256sum -c -; \\",
                "\tmkdir -p /usr/src/tool; \\",
                "\ttar --extract --directory /usr/src/tool --strip-components=1 --file tool.tar.xz; \\",
                "\trm tool.tar.xz; \\",
                "\t\\",
                "\tcd /usr/src/tool; \\",
                "\tgnuArch=\"$(dpkg-architecture --query DEB_BUILD_GNU_TYPE)\"; \\",
                "\t./configure \\",
                "\t\t--build=\"$gnuArch\" \\",
                "\t\t--enable-loadable-sqlite-extensions \\",
                "\t\t--enable-optimizations \\",
                "\t\t--with-system-expat \\",
                "\t; \\",
                "# https://github.com/docker-library/python/issues/160",
                "\tnproc=\"$(nproc)\"; \\",
                "\tmake -j \"$nproc\"; \\",
                "\tmake install; \\",
                "\t\\",
                "\tcd /; \\",
                "\trm -rf /usr/src/tool; \\",
                "\t\\",
                "\tapt-mark auto '.*' > /dev/null; \\",
                "\t[ -z \"$savedAptMark\" ] || apt-mark manual $savedAptMark; \\",
                "\tapt-get purge -y --auto-remove -o APT::AutoRemove::RecommendsImportant=false; \\",
                "\trm -rf /var/lib/apt/lists/*; \\",
                "\t\\",
                "\ttool --version",
                ""]
        if block and len(out) + len(chunk) > lines - 1:
            break
        out += chunk
        block += 1
    out.append('CMD ["tool3"]')
    return "\n".join(out) + "\n"


def corpus() -> list[tuple[str, str]]:
    files = []
    testfiles = CONFORMANCE / "buildkit" / "parser" / "testfiles"
    if testfiles.is_dir():
        for d in sorted(testfiles.iterdir()):
            files.append((d.name, (d / "Dockerfile").read_bytes().decode("utf-8")))
    else:
        print(f"(conformance data not found at {testfiles}; synthesized files only)")
    for n in (100, 200, 300):
        files.append((f"synthetic-app-{n}-lines", synthesize(n)))
    for n in (150, 300):
        files.append((f"synthetic-official-{n}-lines", official_style(n)))
    return files


def best_times(a, b, repeat: int) -> tuple[float, float]:
    """Fastest of ``repeat`` runs of each of two functions, run alternately after a warm-up.

    Alternating exposes both tools to the same machine load; on a busy machine the minimum is
    the run least disturbed by other processes."""
    a()
    b()
    best_a = best_b = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        a()
        best_a = min(best_a, time.perf_counter() - t)
        t = time.perf_counter()
        b()
        best_b = min(best_b, time.perf_counter() - t)
    return best_a, best_b


def fresh(code: str) -> float:
    """Seconds a snippet takes in a new interpreter (best of 5), measured inside it."""
    best = float("inf")
    for _ in range(5):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             cwd=REPO, check=True).stdout
        best = min(best, float(out))
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=30, help="timed parses per file (fastest counts)")
    args = ap.parse_args()

    from dockerfile_parse import DockerfileParser

    from dockerfile_grammar import parse

    def ours(text: str):
        return lambda: parse(text)

    def theirs(text: str):
        data = text.encode("utf-8")
        return lambda: DockerfileParser(fileobj=io.BytesIO(data)).structure

    rows = []
    print(f"{'file':48} {'lines':>5} {'pybuild ms':>11} {'dockerfile-parse ms':>20} {'ratio':>6}")
    for name, text in corpus():
        a, b = best_times(ours(text), theirs(text), args.repeat)
        rows.append((a, b))
        print(f"{name:48} {text.count(chr(10)):5d} {a * 1e3:11.3f} {b * 1e3:20.3f} {b / a:6.2f}")
    total_a = sum(r[0] for r in rows)
    total_b = sum(r[1] for r in rows)
    print(f"{'TOTAL (' + str(len(rows)) + ' files)':48} {'':5} {total_a * 1e3:11.3f} "
          f"{total_b * 1e3:20.3f} {total_b / total_a:6.2f}")
    print(f"pybuild is {total_b / total_a:.2f}x faster than dockerfile-parse on this corpus "
          "(ratio = dockerfile-parse time / pybuild time)")

    hundred = synthesize(100)
    print("\nstart-up, fresh interpreter (best of 5):")
    imp = fresh("import time; t = time.perf_counter(); import dockerfile_grammar; "
                "print(time.perf_counter() - t)")
    print(f"  import dockerfile_grammar:                       {imp * 1e3:7.1f} ms")
    first = fresh("import dockerfile_grammar, time; text = " + repr(hundred) + "; "
                  "t = time.perf_counter(); dockerfile_grammar.parse(text); "
                  "print(time.perf_counter() - t)")
    print(f"  first parse of a 100-line file (loads parser):  {first * 1e3:7.1f} ms")
    lark_loaded = subprocess.run(
        [sys.executable, "-c", "import sys, dockerfile_grammar; dockerfile_grammar.parse("
         + repr(hundred) + "); print('lark' in sys.modules)"],
        capture_output=True, text=True, cwd=REPO, check=True).stdout.strip()
    print(f"  ... did that first parse import Lark?            {lark_loaded}")
    theirs_imp = fresh("import time; t = time.perf_counter(); import dockerfile_parse; "
                       "print(time.perf_counter() - t)")
    print(f"  import dockerfile_parse (peer):                  {theirs_imp * 1e3:7.1f} ms")
    steady = best_times(ours(hundred), ours(hundred), args.repeat)[0]
    print(f"  steady-state parse of a 100-line file:           {steady * 1e3:7.2f} ms")
    grammar = best_times(lambda: parse(hundred, use_grammar=True), ours(hundred), args.repeat)[0]
    print(f"  same, every line through the Lark grammar:       {grammar * 1e3:7.2f} ms")
    lark_lines, total_lines = _lark_share([text for _, text in corpus()])
    print(f"  logical lines the fast path left to Lark:        {lark_lines} of {total_lines}")
    return 0


def _lark_share(texts: list[str]) -> tuple[int, int]:
    """How many logical lines of the corpus needed the Lark grammar in a normal parse."""
    import dockerfile_grammar.arguments as arguments

    real = arguments.grammar_node
    used = 0

    def counting(*a, **kw):
        nonlocal used
        used += 1
        return real(*a, **kw)

    from dockerfile_grammar import parse

    arguments.grammar_node = counting
    try:
        total = sum(len(parse(t).children) for t in texts)
    finally:
        arguments.grammar_node = real
    return used, total




if __name__ == "__main__":
    sys.exit(main())
