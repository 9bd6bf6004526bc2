"""MkDocs hook: the CLI reference is generated from the typer app at build time, never copied by hand.

A page holding the marker below gets typer's own Markdown rendering of `debiaskit` and every sub-command
(`typer.cli.get_docs_for_click`, what `typer debiaskit.cli utils docs` prints). Importing `debiaskit.cli` loads no
torch (the commands import the library inside their functions), so the docs build needs typer and rich only.
"""

from __future__ import annotations

MARKER = "<!-- debiaskit-cli-reference -->"


def cli_markdown() -> str:
    import click
    import typer
    from typer.cli import get_docs_for_click

    from debiaskit.cli import app

    command = typer.main.get_command(app)
    text = get_docs_for_click(obj=command, ctx=click.Context(command, info_name="debiaskit"), name="debiaskit")
    # the page has its own title: drop typer's and move every heading one level down
    lines = text.splitlines()[1:]
    return "\n".join("#" + line if line.startswith("#") else line for line in lines)


def on_page_markdown(markdown: str, page, config, files) -> str:
    return markdown.replace(MARKER, cli_markdown()) if MARKER in markdown else markdown
