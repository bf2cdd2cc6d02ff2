"""Turn a :class:`Digest` into its subject, HTML part and plain-text part.

Templates live in ``templates/``; ``[digest] templates`` names a folder whose files override
them by name. Autoescaping is on for every template but the ``*.txt.j2`` ones, set
explicitly because ``select_autoescape`` does not know ``.j2`` names, and undefined
variables are errors (``StrictUndefined``). Feed HTML is sanitised (``summary``) before it
reaches a template, and feed text is only ever a template *value*, never template source.

An email is built from pieces, each rendered and inlined once per run, not once per
subscriber (see ``inline`` for why the result equals inlining the whole email):

- ``digest.html.j2`` / ``digest.txt.j2``, the layout, rendered per subscriber; it includes
  ``_topic.*.j2`` once per section, in a ``{% for section in sections %}`` loop.
- ``_topic.*.j2`` sees ``section`` (``topic``, ``title``, ``anchor``, ``count``, ``more``,
  ``entries``) and the run-wide ``title``; it includes ``_entry.*.j2`` once per entry of
  ``section.entries``. It is rendered once per distinct (topic, count, more). ``anchor``
  depends on the topic alone: the section's id, which the layout's contents line links to.
- ``_entry.*.j2`` sees ``entry``, ``section.topic``, ``section.title`` and ``title``; it is
  rendered once per (entry, topic, hits) in a run.

Use: ``renderer = Renderer(settings)``; ``renderer.prepare(digests)`` for each batch (one
premailer call for everything the batch needs that the run has not inlined yet);
``renderer.render(digest)`` per subscriber. ``render`` also works without ``prepare``
(it then prepares that one digest itself, which is slow).

The modules, in the order a digest meets them:

- ``templates``: the Jinja environment, template names, rendering whole or cut at slots;
- ``views``: what templates see (``EntryView``, ``SectionView``) and how an entry becomes one;
- ``summary``: feed HTML sanitised, shortened, highlighted, and as plain text;
- ``renderer``: the ``Renderer``, which makes the views and hands them to the assemblers;
- ``pieces``, ``catalogue``, ``html``: the HTML part cut into pieces, inlined per catalogue,
  assembled; ``inline``: premailer, shapes, and why piecewise equals whole;
- ``text``: the text part, wrapped and assembled.
"""

from __future__ import annotations

from .renderer import Renderer
from .templates import (
    BUILTIN_TEMPLATES,
    ENTRY_HTML,
    ENTRY_TEXT,
    LAYOUT_HTML,
    LAYOUT_TEXT,
    PREHEADER,
    SUBJECT,
    TEMPLATES,
    TOPIC_HTML,
    TOPIC_TEXT,
    template_environment,
    template_error,
)
from .text import TEXT_WIDTH, wrap_text
from .views import MAX_AUTHORS, EntryView, SectionRef, SectionView, entry_view, safe_link

__all__ = [
    "BUILTIN_TEMPLATES",
    "ENTRY_HTML",
    "ENTRY_TEXT",
    "LAYOUT_HTML",
    "LAYOUT_TEXT",
    "MAX_AUTHORS",
    "PREHEADER",
    "SUBJECT",
    "TEMPLATES",
    "TEXT_WIDTH",
    "TOPIC_HTML",
    "TOPIC_TEXT",
    "EntryView",
    "Renderer",
    "SectionRef",
    "SectionView",
    "entry_view",
    "safe_link",
    "template_environment",
    "template_error",
    "wrap_text",
]
