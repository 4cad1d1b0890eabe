"""The public API of each package: every exported name resolves, the facades do what docs/api.md
says against real parts (a store with the busybox base, registry:2, runc), and the README's Python
example runs as written."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.building import write_context

REPO = Path(__file__).resolve().parents[2]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="builds need root (runc, overlay mounts)")


# -- the facades -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["dockerfile_grammar", "registry", "builder", "builder.cache",
                                  "builder.containers"])
def test_every_exported_name_resolves_and_the_list_is_small(name):
    """Each name in ``__all__`` resolves (in a fresh interpreter, so laziness cannot hide a typo),
    the package documents its API, and exports at most 25 names."""
    code = (f"import {name} as m; missing = [n for n in m.__all__ if getattr(m, n, None) is None];"
            "assert not missing, missing; assert len(m.__all__) == len(set(m.__all__)) <= 25, m.__all__;"
            "assert 'Public API' in m.__doc__")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr


def test_imports_stay_lazy():
    """Importing a package loads none of what its names point to until one is used."""
    code = ("import sys, registry, dockerfile_grammar, builder, builder.cache, builder.containers;"
            "heavy = [m for m in ('registry.client', 'registry.transfer', 'registry.store', 'lark',"
            " 'dockerfile_grammar.parser', 'builder.engine.build', 'builder.api', 'requests')"
            " if m in sys.modules]; assert not heavy, heavy")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr


def test_one_exception_tree_per_package():
    import builder
    import dockerfile_grammar
    import registry
    from builder.errors import BuildError, DockerignoreError
    assert builder.BuildError is BuildError and issubclass(DockerignoreError, BuildError)
    for name in ("NotFoundError", "AuthError", "DigestMismatchError", "InvalidReferenceError"):
        assert issubclass(getattr(registry, name), registry.RegistryError)
    assert issubclass(dockerfile_grammar.DockerfileError, Exception)
    with pytest.raises(registry.InvalidReferenceError):
        registry.parse_reference("UPPER/case:bad tag")


def test_dockerfile_grammar_facade():
    import dockerfile_grammar as dg
    text = 'FROM busybox AS base\nENV A=1\nRUN echo "$A"\n'
    df = dg.parse_dockerfile(text)
    assert [type(i).__name__ for i in df.stages[0].instructions] == ["EnvCommand", "RunCommand"]
    assert isinstance(df.stages[0].instructions[1], dg.instructions.RunCommand)
    assert dg.RunCommand is dg.instructions.RunCommand
    assert "(from \"busybox\" \"AS\" \"base\")" in dg.dump_ast(dg.parse(text))
    assert dg.expand_word("$A/x", {"A": "/a"}) == "/a/x"
    with pytest.raises(dg.DockerfileError):
        dg.parse_dockerfile("FROM\n")


# -- registry --------------------------------------------------------------------------------------
def test_store_open_and_image(busybox_image):
    import registry
    store = registry.Store.open(busybox_image)
    assert isinstance(store, registry.Store) and store.root == Path(busybox_image)
    img = store.image("busybox")
    assert isinstance(img, registry.Image)
    assert img.config.config.cmd == ["sh"]
    assert [l.diff_id for l in img.layers] == img.config.diff_ids and len(img.layers) == 1
    assert img.manifest.digest == store.resolve("busybox").digest
    assert json.loads(img.manifest.data)["config"]["digest"] == img.manifest.doc.config.digest
    with pytest.raises(registry.NotFoundError):
        store.image("nothing-here:1")


@pytest.mark.integration
def test_client_context_manager_push_pull_copy_tags_image(registry, busybox_image, tmp_path):
    import registry as reg
    host = registry.host
    store = reg.Store.open(busybox_image)
    with reg.Client(backoff_initial=0.01) as client:
        pushed = client.push(f"{host}/api/busybox:1", store, source="busybox:latest")
        assert isinstance(pushed, reg.TransferResult) and pushed.digest == store.resolve("busybox").digest
        assert client.tags(f"{host}/api/busybox") == ["1"]
        copied = client.copy(f"{host}/api/busybox:1", f"{host}/api/mirror:2")
        assert copied.digest == pushed.digest
        remote = client.image(f"{host}/api/mirror:2")
        assert [l.diff_id for l in remote.layers] == store.image("busybox").config.diff_ids
        other = reg.Store.open(tmp_path / "other")
        pulled = client.pull(f"{host}/api/mirror:2", other)
        assert other.image(f"{host}/api/mirror:2").manifest.digest == pulled.digest == pushed.digest
    # the one-shot calls take (ref, store) both ways, and the old argument orders still work
    third = tmp_path / "third"
    assert reg.pull(f"{host}/api/busybox:1", third).digest == pushed.digest
    assert reg.push(f"{host}/api/again:3", third, source=f"{host}/api/busybox:1").digest == pushed.digest
    from tests.fixtures.registry import fast_client
    with fast_client() as old:
        assert reg.push(old, store, "busybox:latest", f"{host}/api/old:4").digest == pushed.digest
        assert reg.pull(old, f"{host}/api/old:4", reg.Store.open(tmp_path / "fourth")).digest == pushed.digest


# -- builder ---------------------------------------------------------------------------------------
@needs_root
@pytest.mark.integration
def test_build_returns_typed_steps_and_cache_functions(busybox_image, tmp_path):
    import builder
    ctx = write_context(tmp_path / "ctx", "FROM busybox\nARG V\nCOPY a.txt /a.txt\nRUN echo $V > /v\n",
                        {"a.txt": "a\n"})
    res = builder.build(ctx, tags=["api:1"], build_args={"V": "1"}, root=busybox_image)
    assert isinstance(res, builder.BuildResult) and res.tags == ["api:1"]
    assert all(isinstance(s, builder.BuildStep) for s in res.steps)
    assert [s.instruction.split()[0] for s in res.steps] == ["FROM", "ARG", "COPY", "RUN"]
    run = res.steps[-1]
    assert not run.cached and run.layer_digest.startswith("sha256:") and run["layer_size"] == run.layer_size
    assert run.to_dict()["instruction"] == run.instruction
    again = builder.build(ctx, tags=["api:2"], build_args={"V": "1"}, root=busybox_image)
    assert [s.cached for s in again.steps if s.layer_digest] == [True, True]
    assert [l.descriptor.digest for l in again.layers] == [l.descriptor.digest for l in res.layers]
    explained = builder.explain(ctx, build_args={"V": "2"}, root=busybox_image)
    assert [e.status for e in explained][-2:] == ["hit", "miss"]
    entries = builder.cache.entries(busybox_image)
    assert len(entries) >= 2
    usage = builder.cache.disk_usage(busybox_image)
    assert usage.entries == len(entries) and usage.total >= usage.reclaimable
    pruned = builder.cache.prune(busybox_image, all=True, older_than="0s")
    assert pruned.removed == len(entries) and builder.cache.entries(busybox_image) == []
    with pytest.raises(TypeError, match="no_such_option"):
        builder.build(ctx, root=busybox_image, no_such_option=1)
    with pytest.raises(builder.BuildError):
        builder.build(ctx, root=busybox_image, network="bogus")


@needs_root
@pytest.mark.integration
def test_containers_run_ps_rm(busybox_image):
    import builder
    from builder.runtime.sandbox import runtime_available
    if not runtime_available():
        pytest.skip("runc not installed (Debian's runc package)")
    out: list[bytes] = []
    c = builder.containers.run("busybox", ["sh", "-c", "echo hi; exit 3"], root=busybox_image,
                               output=lambda stream, chunk: out.append(chunk))
    assert c.state.exit_code == 3 and b"".join(out) == b"hi\n"
    assert [x.id for x in builder.containers.ps(all=True, root=busybox_image)] == [c.id]
    assert b"".join(chunk for _, chunk in builder.containers.logs(c.name, root=busybox_image)) == b"hi\n"
    assert builder.containers.stop(c, root=busybox_image) is False        # it has exited
    builder.containers.rm(c.id, root=busybox_image)
    assert builder.containers.ps(all=True, root=busybox_image) == []


# -- the README -------------------------------------------------------------------------------------
def _readme_python() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert len(blocks) == 1, "the README has one Python example"
    return blocks[0]


@needs_root
@pytest.mark.integration
def test_readme_python_example_runs_as_written(busybox_image):
    """The README's example, unchanged, in a fresh interpreter at the checkout's top, against a
    store holding the busybox base (what the README's `pybuild import` makes)."""
    env = {**os.environ, "PYBUILD_ROOT": str(busybox_image), "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", _readme_python()], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert re.fullmatch(r"sha256:[0-9a-f]{64} sha256:[0-9a-f]{64}", lines[0])
    assert any(l.endswith("COPY hello.sh ./") for l in lines)
    assert "['/app/hello.sh']" in r.stdout and "Usage(" in r.stdout


# -- the CLI's one formatter -----------------------------------------------------------------------
def test_one_formatter():
    from builder.cli.format import ago, ago_rfc3339, human_duration, human_size, parse_duration, parse_size
    assert [human_size(n) for n in (0, 999, 25_000, 1_234_567, 999_999, 2.5e9)] == \
        ["0B", "999B", "25kB", "1.23MB", "1MB", "2.5GB"]
    assert [human_duration(s) for s in (0.2, 1, 42, 61, 300, 3700, 7200, 3 * 86400, 20 * 86400)] == \
        ["Less than a second", "1 second", "42 seconds", "About a minute", "5 minutes", "About an hour",
         "2 hours", "3 days", "2 weeks"]
    assert ago(1000.0, now=1300.0) == "5 minutes ago" and ago(0) == "never"
    assert ago_rfc3339("1970-01-01T00:05:00.000000Z", now=600.0) == "5 minutes ago"
    assert ago_rfc3339(None) == ago_rfc3339("garbage") == "N/A"
    assert parse_size("2GB") == 2 << 30 and parse_duration("1h30m") == 5400


def test_no_command_keeps_its_own_size_formatter():
    """Every command formats through builder/cli/format.py (one format for users)."""
    for path in (REPO / "builder" / "cli").glob("*.py"):
        if path.name == "format.py":
            continue
        text = path.read_text()
        assert not re.search(r"def (human_size|human_age|_ago|_size)\b", text), path
        assert "registry.progress import human_size" not in text, path
