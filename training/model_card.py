"""How the training commands write model cards (README.md of a model directory), so a card records its lineage.

A command that makes a model from another one either puts its own text first and the parent's card under
``## Base model`` (``persistworld posttrain``), or adds a section about what it changed to the parent's card
(``tune-decoder``, ``swap-decoder``: :func:`add_section`, which keeps that section above any ``## Base model``).
Either way every command of the lineage stays in the card as a ``- command: `...``` line, and
:func:`card_commands` lists them in the order they ran.
"""
from __future__ import annotations

import re

BASE_MODEL_HEADING = "## Base model"
_COMMAND = re.compile(r"- command: `([^`]+)`")


def add_section(card: str, section: str) -> str:
    """``card`` with ``section`` (markdown starting with its ``## `` heading) after the model's own text: at the
    end, or just above the card's ``## Base model`` part, so that part stays the base model's card alone."""
    head, found, base = card.partition(f"\n{BASE_MODEL_HEADING}\n")
    section = section.strip() + "\n"
    if not found:
        return card.rstrip() + "\n\n" + section
    return head.rstrip() + "\n\n" + section + "\n" + found.lstrip("\n") + base


def card_commands(card: str) -> list[str]:
    """Every ``- command:`` of a model card in the order the commands ran: a ``## Base model`` part's first, then
    the text above it (the model's own command, then those of sections added by :func:`add_section`)."""
    head, found, base = card.partition(f"\n{BASE_MODEL_HEADING}\n")
    return (card_commands(base) if found else []) + _COMMAND.findall(head)


def first_command(text: str) -> str | None:
    """The first ``- command:`` of ``text`` (None if it has none)."""
    match = _COMMAND.search(text)
    return match.group(1) if match else None
