"""mkdocs hook: Sphinx roles in docstrings (:class:`X`, :func:`y`) render as plain code.

The docstrings are Google style, with a few Sphinx cross-reference roles in their prose;
mkdocstrings renders the role's name as text (":class:" before the code), which this drops.
"""

import re

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|obj|data|exc):(?=<code)")


def on_page_content(html, **kwargs):
    return _ROLE.sub("", html)
