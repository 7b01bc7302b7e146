"""Make the checkout's .venv usable: the first step of ./run-demo and ./run-tests.

Run with any python3 (even one older than vfnic needs, so that it can say
so clearly or find a newer one); uses only the standard library. Idempotent:
when .venv exists and pyproject.toml has not changed since the last
`pip install -e .`, it does nothing and prints nothing.

    python3 images/bootstrap.py [--quiet]
"""
import hashlib
import os
import shutil
import subprocess
import sys

MINIMUM = (3, 11)
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(CHECKOUT, ".venv")
VENV_PYTHON = os.path.join(VENV, "bin", "python")
#: pyproject.toml's hash at the last successful `pip install -e .`
STAMP = os.path.join(VENV, ".vfnic-pyproject.sha256")


def fail(message):
    sys.stderr.write("bootstrap: %s\n" % message)
    sys.exit(1)


def version_of(python):
    try:
        output = subprocess.check_output(
            [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
    except (OSError, subprocess.CalledProcessError):
        return None
    return tuple(int(n) for n in output.decode().strip().split("."))


def find_python():
    """$VFNIC_PYTHON, else this interpreter if new enough, else the newest
    python3.N >= 3.11 on PATH."""
    explicit = os.environ.get("VFNIC_PYTHON")
    candidates = [explicit] if explicit else [sys.executable] + [
        shutil.which("python3.%d" % minor) for minor in range(20, MINIMUM[1] - 1, -1)]
    for python in filter(None, candidates):
        version = version_of(python)
        if version and version >= MINIMUM:
            return python
    found = version_of(candidates[0])
    fail("vfnic needs Python >= 3.11, but %s is Python %s; install python3.11 or newer, or "
         "point VFNIC_PYTHON at one" % (candidates[0], ".".join(map(str, found or ["?"]))))


def pyproject_hash():
    with open(os.path.join(CHECKOUT, "pyproject.toml"), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def run(argv, what, quiet):
    if not quiet:
        sys.stderr.write("bootstrap: %s\n" % what)
    result = subprocess.run(argv, cwd=CHECKOUT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        fail("%s failed:\n%s" % (what, result.stdout.decode(errors="replace")[-3000:]))


def main():
    quiet = "--quiet" in sys.argv[1:]
    if not os.path.exists(VENV_PYTHON):
        python = find_python()
        run([python, "-m", "venv", VENV], "creating .venv with %s" % python, quiet)
    elif (version_of(VENV_PYTHON) or (0, 0)) < MINIMUM:
        fail("%s is older than Python 3.11; remove .venv to recreate it" % VENV_PYTHON)
    wanted = pyproject_hash()
    try:
        with open(STAMP) as f:
            installed = f.read().strip()
    except OSError:
        installed = None
    if installed != wanted:
        run([VENV_PYTHON, "-m", "pip", "install", "--quiet", "-e", "."], "pip install -e .", quiet)
        with open(STAMP, "w") as f:
            f.write(wanted + "\n")


if __name__ == "__main__":
    main()
