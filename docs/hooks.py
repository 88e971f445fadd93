"""MkDocs hooks of the API reference site (mkdocs.yml): the notebooks and the README's quick start.

- `on_files` adds the jupytext scripts in ``notebooks/`` (outside ``docs/``) as ``notebooks/NAME.py``,
  before mkdocs-jupyter turns them into pages, so they are rendered from the one copy the tests run.
- `on_page_markdown` replaces a line ``<!-- README: Section title -->`` with that ``##`` section of
  README.md, so the site's home page shows the quick start without a second copy to keep in step;
  the README's links into ``docs/`` are made relative to the page.
"""

import re
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
_INCLUDE = re.compile(r"^<!-- README: (.+?) -->$", re.MULTILINE)


@event_priority(100)  # before mkdocs-jupyter's on_files, which wraps the notebooks it matches
def on_files(files, config):
    for path in sorted((ROOT / "notebooks").glob("*.py")):
        files.append(
            File(
                f"notebooks/{path.name}",
                src_dir=str(ROOT),
                dest_dir=config["site_dir"],
                use_directory_urls=config["use_directory_urls"],
            )
        )
    return files


def readme_section(title: str) -> str:
    """The body of README.md's ``## title`` section, up to the next ``##`` heading."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    if match is None:
        raise ValueError(f"README.md has no section '## {title}' (asked for by a docs page)")
    return match.group(1).strip()


def on_page_markdown(markdown, page, config, files):
    # README.md sits above docs/, so its "](docs/x)" is "](x)" from a page at the top of docs/
    up = "../" * page.file.src_uri.count("/")
    return _INCLUDE.sub(lambda m: readme_section(m.group(1)).replace("](docs/", f"]({up}"), markdown)
