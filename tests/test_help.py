"""Every job's --help: the options' defaults are stated once, and never as "(default: None)"."""
from __future__ import annotations

import re

import pytest

from conftest import REPO, call_job

JOBS = sorted(p.stem for p in (REPO / "jobs").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("job", JOBS)
def test_help_states_defaults_once(job):
    result = call_job(f"jobs.{job}", "--help")
    assert result.returncode == 0 and "usage:" in result.stdout, result.stderr
    assert "(default: None)" not in " ".join(result.stdout.split()), result.stdout
    # An option whose help already gives its default gets no second "(default: ...)". Each
    # option's entry starts with "  -" and goes on over more deeply indented lines.
    entries, entry = [], None
    for line in result.stdout.splitlines():
        if re.match(r"^  -", line):
            entry = [line]
            entries.append(entry)
        elif entry is not None and line.startswith("   "):
            entry.append(line)
        else:
            entry = None
    for lines in entries:
        text = " ".join(" ".join(lines).split())
        assert text.count("default") <= 1 or "(default:" not in text, text
