"""Running the command line in tests, and the check that every refusal is a message: never a Python traceback."""

from __future__ import annotations

from click.testing import CliRunner, Result

from mdarts_rs.cli import main


def invoke(*args: object) -> Result:
    """``mdarts-rs`` with ``args`` (paths and numbers as text), in this process."""
    return CliRunner().invoke(main, [str(a) for a in args])


def said(r: Result, code: int, *texts: str) -> str:
    """Check that ``r`` exited with ``code`` and printed each of ``texts`` as a message: no traceback, no exception
    but click's exit. Returns the output."""
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    for text in texts:
        assert text in r.output, (text, r.output)
    return r.output
