"""structdrop_tutorial/environment.py: the one-line device report of every notebook's first cell."""
import os

from structdrop_tutorial import environment


def test_report_device_prints_and_returns_one_line(capsys):
    line = environment.report_device()
    assert capsys.readouterr().out == line + "\n"
    assert "\n" not in line and ("CPU" in line or "GPU" in line)
    assert environment.on_colab() is False


def test_quiet_tensorflow_keeps_an_existing_setting(monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    environment.quiet_tensorflow()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "1" and os.environ["TF_ENABLE_ONEDNN_OPTS"] == "0"
