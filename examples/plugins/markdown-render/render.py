"""Render Markdown with Python-Markdown, bundled in this plugin's vendor/.

`make demo` installs the package there with `pip install --target`, so the
plugin reads only its own folder under a default-deny policy.
"""

import markdown


def to_html(text: str) -> dict:
    html = markdown.markdown(text, extensions=["tables", "fenced_code"])
    return {"html": html, "markdown_version": markdown.__version__}
