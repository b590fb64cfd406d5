"""The fenced code blocks of a Markdown file, for the tests that run the README's and the lessons' examples."""

import re

PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def python_blocks(text):
    """Every ```python block of ``text``, in order."""
    return PYTHON_BLOCK.findall(text)


def section_python_blocks(text, heading):
    """Every ```python block of the section of ``text`` that starts with ``heading`` (to the next ``## ``)."""
    section = text[text.index(heading) + len(heading):]
    section = section[:section.index("\n## ")] if "\n## " in section else section
    return python_blocks(section)
