"""The wheel is the product: built from this checkout, installed into a fresh venv, it runs every
command and a real build with nothing imported from the source tree.

Offline: the wheel is built without build isolation (the installed setuptools and wheel), and the
venv finds the dependencies where the interpreter running the tests has them, so pip needs no
index.
"""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from builder import cli
from builder._version import __version__

REPO = Path(__file__).resolve().parents[2]


def _clean_env(venv: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INDEX"] = "1"
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    try:
        import wheel as _  # noqa: F401  (setuptools before 70.1 needs it for bdist_wheel)
    except ImportError:
        pytest.skip("building a wheel without build isolation needs the `wheel` package "
                    "(in the test extras: scripts/setup.sh installs them into .venv)")
    out = tmp_path_factory.mktemp("wheel")
    # A copy of the sources, so that the build's own build/ and egg-info stay out of the checkout.
    src = out / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "dockerfile_grammar", "registry", "builder"):
        subprocess.run(["cp", "-a", str(REPO / name), str(src / name)], check=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(out), str(src)], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    wheels = list(out.glob("pybuild-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory) -> Path:
    v = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", str(v)], check=True)
    # The dependencies from the interpreter running the tests, through a .pth naming their
    # directories (not --system-site-packages: under a venv that means the base interpreter's,
    # and a site directory would also process the checkout's editable-install .pth).
    import isal, lark, requests, zstandard  # noqa: E401
    dirs = dict.fromkeys(str(Path(m.__file__).resolve().parent.parent) for m in (isal, lark, requests, zstandard))
    site = next((v / "lib").glob("python3*/site-packages"))
    (site / "pybuild-test-deps.pth").write_text("".join(d + "\n" for d in dirs))
    r = subprocess.run([str(v / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps",
                        "--force-reinstall", str(wheel)], capture_output=True, text=True, env=_clean_env(v))
    assert r.returncode == 0, r.stdout + r.stderr
    return v


def test_wheel_holds_every_package_and_data_file(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for pkg_dir in ("dockerfile_grammar", "registry", "builder"):
        for path in (REPO / pkg_dir).rglob("*"):
            if path.suffix in (".py", ".lark") and "__pycache__" not in path.parts:
                rel = path.relative_to(REPO).as_posix()
                assert rel in names, f"{rel} is missing from {wheel.name}"
    assert f"pybuild-{__version__}.dist-info/METADATA" in names


def _run(venv: Path, *args: str, cwd: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / "pybuild"), *args], cwd=cwd, capture_output=True,
                          text=True, env=_clean_env(venv), timeout=120, **kw)


def test_installed_wheel_imports_nothing_from_the_checkout(venv: Path, tmp_path: Path) -> None:
    code = "import builder, registry, dockerfile_grammar as d; print(builder.__file__, registry.__file__, d.__file__)"
    r = subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, env=_clean_env(venv))
    assert r.returncode == 0, r.stderr
    for f in r.stdout.split():
        assert str(venv) in f and str(REPO) not in f, r.stdout


def test_version_and_every_commands_help(venv: Path, tmp_path: Path) -> None:
    r = _run(venv, "--version", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == f"pybuild version {__version__}", r
    r = _run(venv, "--help", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for name in sorted(cli.COMMAND_OWNERS):
        r = _run(venv, name, "--help", cwd=tmp_path)
        assert r.returncode == 0 and "usage: pybuild " + name in r.stdout, (name, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr, r.stderr


def test_installed_wheel_builds_saves_and_loads(venv: Path, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "hello.txt").write_text("hello from the wheel\n")
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY hello.txt /hello.txt\nLABEL made=wheel\nCMD [\"/hello\"]\n")
    root = tmp_path / "root"
    r = _run(venv, "--root", str(root), "build", "--progress", "plain", "-t", "wheel/test:1", str(ctx), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = _run(venv, "--root", str(root), "images", "wheel/test", cwd=tmp_path)
    assert r.returncode == 0 and "wheel/test" in r.stdout, r
    r = _run(venv, "--root", str(root), "save", "wheel/test:1", "-o", str(tmp_path / "img.tar"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = _run(venv, "--root", str(tmp_path / "root2"), "load", "-i", str(tmp_path / "img.tar"), cwd=tmp_path)
    assert r.returncode == 0 and "Loaded image: wheel/test:1" in r.stdout, r
