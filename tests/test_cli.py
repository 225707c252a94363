"""One CLI: every command is dispatched the same way, shares the common flags, and its --help ends with the one
exit-code table, whose numbers mean one thing for every command."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from mnist_pipeline.cli.main import _parser, main
from prefect_wandb.exit_codes import EPILOG, MEANING, Exit, from_signal, markdown

REPO = Path(__file__).resolve().parents[1]


def _commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_command_has_a_handler_and_the_exit_code_table_in_its_help():
    commands = _commands()
    assert {"run", "show-config", "serve", "sweep", "audit", "sync", "reproduce", "impact", "rollback",
            "gc"} <= set(commands)
    for name, parser in commands.items():
        assert callable(parser.get_default("handler")), name
        assert parser.format_help().rstrip().endswith(EPILOG.rstrip()), name
    assert _parser().format_help().rstrip().endswith(EPILOG.rstrip())


def test_the_store_commands_share_lineage_db_and_json():
    for name in ("audit", "sync", "reproduce", "impact", "rollback", "gc"):
        flags = {o for a in _commands()[name]._actions for o in a.option_strings}
        assert {"--lineage-db", "--json"} <= flags, name
        assert _commands()[name].get_default("lineage_db") == "mnist-runs/lineage.db", name


def test_one_table_every_number_one_meaning():
    assert [int(c) for c in Exit] == list(range(len(Exit)))  # no gaps, no aliases
    assert set(MEANING) == set(Exit)
    assert from_signal(15) == 143 and from_signal(2) == 130
    for code in Exit:
        assert f"| {int(code)} | {MEANING[code]} |" in markdown()
        assert f"  {int(code):<7}" in EPILOG


@pytest.mark.parametrize("argv", [["audit", "x"], ["sync"], ["impact", "x"], ["reproduce", "x"], ["rollback"],
                                  ["gc"]])
def test_no_lineage_store_is_a_usage_error_for_every_store_command(tmp_path, capsys, argv):
    assert main([*argv, "--lineage-db", str(tmp_path / "none.db")]) == Exit.USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no lineage store at" in err, err


def test_a_bad_flag_is_a_usage_error_with_argparse_s_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mnist_pipeline.cli.main", "audit", "--no-such-flag"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == Exit.USAGE, r.stderr
    assert "the following arguments are required: target" in r.stderr and "Traceback" not in r.stderr


# What each exit code is about, in the words the docs use for it: a docs page that gives a command's verdict another
# number than the one table (exit_codes.py) says is wrong (docs/operations.md once said "refused (exit 3)").
WORDS = {Exit.VERIFY_FAILED: r"^\**(differs|tampered)", Exit.REFUSED: r"^refused",
         Exit.WANDB_UNAVAILABLE: r"^(the )?w&b (unreachable|alias could not)", Exit.STORE: r"damaged store",
         Exit.NOT_FOUND: r"inputs are gone"}


def _exit_claims(text: str) -> list[tuple[int, str]]:
    """(code, what the page says it means): table rows `| N | meaning |`, and `N word` after 'exit codes:'."""
    import re

    claims = [(int(m[1]), m[2].lower()) for m in re.finditer(r"^\| (\d) \| (.*?) \|$", text, re.M)]
    claims += [(int(m[2]), m[1].lower()) for m in re.finditer(r"(\w+) \(exit (\d)\)", text)]
    for part in re.findall(r"[Ee]xit codes?: ([^.]*)", text):
        claims += [(int(m[1]), m[2].lower()) for m in re.finditer(r"\b(\d) ([^,;]+)", part)]
    return claims


def test_the_docs_give_each_outcome_the_one_table_s_exit_code():
    import re

    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    wrong = []
    for page in pages:
        for code, meaning in _exit_claims(page.read_text()):
            for right, pattern in WORDS.items():
                if code != right and re.search(pattern, meaning):
                    wrong.append(f"{page.name}: {code} for {meaning!r} (the table: {int(right)})")
    assert wrong == []
    # the check reads each form: a table row, a list after "exit codes:", "word (exit N)"
    assert _exit_claims("| 7 | refused |\nExit codes: 0 done, 3 refused. It is refused (exit 3).") == [
        (7, "refused"), (3, "refused"), (0, "done"), (3, "refused")]


def test_the_readme_s_exit_code_table_is_the_one_table():
    assert markdown() in (REPO / "README.md").read_text()
