"""``BASE/v/TOKEN/ENTRY/more`` and ``.../less``: "more / less like this" beside each entry.

Mail scanners and link previews open every link in an email, so opening one changes
nothing: the page says what the vote will do and records it with a button (a POST,
protected against other sites by a form token, :mod:`.forms`). The POST is idempotent: the
same vote again changes nothing, the other vote replaces the first. A bad or altered token,
an entry the reader was never sent, or a vote other than ``more`` / ``less`` gets the plain
404 page, and a refused form the 403 page; neither records anything.
"""

from __future__ import annotations

from flask import Blueprint, Response, abort

from ..render.views import safe_link
from ..run.votes import VoteTarget, cast_vote, vote_target
from ..store import VOTES, Vote, VoteKind, voter
from ..text import clean_text
from .context import page, subscriber_for, web
from .forms import check_form, form_token
from .links import reader_link

blueprint = Blueprint("feedback", __name__)

FORM = "vote"


def _kind(vote: str) -> VoteKind:
    if vote not in VOTES:
        abort(404)
    return "more" if vote == "more" else "less"


def _form_subject(email: str, entry_id: int) -> str:
    """What a vote form's token is for: this reader and this entry (either vote)."""
    return f"{voter(email)}\x1f{entry_id}"


def _page(
    target: VoteTarget, email: str, vote: VoteKind, *, done: Vote | None, before: Vote | None
) -> Response:
    site = web()
    entry = target.entry
    return page(
        "web/vote.html",
        vote=vote,
        other="less" if vote == "more" else "more",
        entry_title=clean_text(entry.title) or "(untitled)",
        entry_link=safe_link(entry.link),
        pruned=target.pruned,
        current=target.current.vote if target.current else None,
        done=done is not None,
        changed=before.vote if before is not None and before.vote != vote else None,
        again=before is not None and before.vote == vote,
        csrf=form_token(FORM, _form_subject(email, entry.id)),
        archive_url=reader_link(site.settings, "archive", email),
    )


@blueprint.get("/v/<token>/<int:entry_id>/<vote>")
def vote_page(token: str, entry_id: int, vote: str) -> Response:
    """What the vote does, and a button that records it; opening it records nothing."""
    kind = _kind(vote)
    subscriber = subscriber_for("vote", token)
    target = vote_target(web().store, subscriber.email, entry_id)
    if target is None:
        abort(404)
    return _page(target, subscriber.email, kind, done=None, before=None)


@blueprint.post("/v/<token>/<int:entry_id>/<vote>")
def record(token: str, entry_id: int, vote: str) -> Response:
    """Record the vote (the page's button)."""
    kind = _kind(vote)
    subscriber = subscriber_for("vote", token)
    check_form(FORM, _form_subject(subscriber.email, entry_id))
    site = web()
    cast = cast_vote(site.store, subscriber.email, entry_id, kind, site.clock())
    if cast is None:
        abort(404)
    target, before = cast
    done = site.store.vote_of(subscriber.email, entry_id)
    return _page(target, subscriber.email, kind, done=done, before=before)
