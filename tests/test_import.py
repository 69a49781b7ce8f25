import subprocess
import sys


def test_package_import_pulls_in_no_framework():
    code = ("import sys, structdrop_tutorial, structdrop_tutorial.numpy, structdrop_tutorial.plot;"
            "bad = [m for m in ('torch', 'tensorflow', 'keras', 'matplotlib') if m in sys.modules];"
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
