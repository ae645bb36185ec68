"""The one line a refused command prints, for the tests of bad inputs."""

from __future__ import annotations

import pytest

from famix.cli import main


def one_line(capsys, *argv, hint: bool = False) -> str:
    """Run ``famix *argv``, require exit code 2 and a one-line error on stderr (``hint``: the expected folder
    layout may follow that line), and return the line."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and (hint or len(err.splitlines()) == 1), err
    return err.splitlines()[0]
