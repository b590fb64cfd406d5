"""The fenced code blocks of a Markdown file, for the tests that run the README's and the lessons' examples."""

import re

PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def python_blocks(text):
    """Every ```python block of ``text``, in order."""
    return PYTHON_BLOCK.findall(text)


def python_block_after(text, heading):
    """The first ```python block of the section of ``text`` that starts with ``heading``."""
    return python_blocks(text[text.index(heading):])[0]
