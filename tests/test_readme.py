"""The README's copies of what the project prints are what it prints."""

from __future__ import annotations

import re
from string import Template

from config.settings import PROJECT_ROOT

README = (PROJECT_ROOT / "README.md").read_text()


def test_the_readme_shows_the_banner_make_run_prints() -> None:
    script = (PROJECT_ROOT / "scripts" / "run.sh").read_text()
    [heredoc] = re.findall(r"^cat <<MSG\n(.*?)^MSG$", script, flags=re.MULTILINE | re.DOTALL)
    printed = Template(heredoc).substitute(HOST="127.0.0.1", INCREMENT_PORT="8000", BOARD_PORT="8001")
    quick_start = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    [shown] = re.findall(r"^```\n(  Increment Service.*?)^```$", quick_start, flags=re.MULTILINE | re.DOTALL)
    assert shown.strip("\n") == printed.strip("\n")
