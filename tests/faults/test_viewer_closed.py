"""Closing napari while a job of ours runs: the process goes on (a notebook kernel survives),
nothing is raised into napari's exception hook, the job's files are gone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("close_during_run.py")


JOBS = ["load", "click", "propagate", "precompute", "everything", "preencode"]


@pytest.mark.parametrize("job", JOBS)
def test_closing_the_viewer_mid_job_exits_cleanly(job, widget_checkpoint, tmp_path):
    temp = tmp_path / "temp"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp), "NAPARI_SAM2_EMBEDDINGS": str(tmp_path / "emb")}
    done = subprocess.run([sys.executable, str(SCRIPT), str(widget_checkpoint), job],
                          capture_output=True, text=True, timeout=300, env=env)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Traceback" not in output and "Aborted" not in output, output
    assert f"CLOSED {job}" in done.stdout and "DONE idle" in done.stdout, output
    assert output.count("was stopped") <= 1, output  # one notice, not one per layer
    assert [p.name for p in temp.iterdir() if "napari-sam2" in p.name] == []  # spills freed
