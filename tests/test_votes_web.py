"""Votes from the email over real HTTP: the links are taken from real .eml files the file
backend wrote; opening them (GET, HEAD) records nothing, the page's button does."""

from __future__ import annotations

import email.message
import html
import json
import re
from datetime import timedelta

import httpx
from sqlmodel import select

from newsletter import db, feedback, snapshot, tokens
from newsletter.backends.file import FileBackend
from newsletter.feedback import taught
from newsletter.models import Delivery, Event, Paper, Subscriber
from newsletter.plan import plan_digests
from newsletter.runtime import secret_key
from newsletter.web import create_app
from newsletter.web.votes import VOTES_PER_HOUR
from tests.helpers import add_paper, deliver, live_server, runtime_for
from tests.smtp_server import free_port
from tests.test_web import Site, _csrf, _digests, _path, _status
from tests.test_web import site as site

URL_RE = re.compile(r"https?://[^\s\"'<>]+")


def _parts(msg: email.message.EmailMessage) -> tuple[str, str]:
    text, markup = (part.get_content().replace("\r\n", "\n") for part in msg.iter_parts())
    return text, markup


def _vote_links(msg: email.message.EmailMessage) -> tuple[list[str], list[str]]:
    """(links in the HTML part, links in the text part) that lead to a vote page."""
    text, markup = _parts(msg)
    in_html = [html.unescape(u) for u in re.findall(r'href="([^"]+)"', markup) if "/v/" in u]
    in_text = [u for u in URL_RE.findall(text) if "/v/" in u]
    return in_html, in_text


def _events(site: Site, kind: str) -> list[dict]:  # type: ignore[type-arg]
    with db.session_scope(engine=site.engine) as session:
        return [
            json.loads(e.detail) | {"subscriber": e.subscriber_id, "delivery": e.delivery_id}
            for e in session.exec(select(Event).where(Event.kind == kind).order_by(Event.id))
        ]


def _taught(site: Site) -> dict:  # type: ignore[type-arg]
    with db.session_scope(engine=site.engine) as session:
        return taught(session=session)


def _ids(site: Site, address: str) -> tuple[int, int]:
    with db.session_scope(engine=site.engine) as session:
        sid = session.exec(select(Subscriber.id).where(Subscriber.email == address)).one()
        pid = session.exec(select(Paper.id).where(Paper.title == "Diffusion for All")).one()
        return sid, pid  # type: ignore[return-value]


def test_every_paper_carries_both_votes_in_both_parts_and_opening_any_link_records_nothing(
    site: Site,
    now,  # type: ignore[no-untyped-def]
) -> None:
    messages = _digests(site, now, ["dee@example.org", "eve@example.org"])
    msg = messages["dee@example.org"]
    in_html, in_text = _vote_links(msg)
    assert [u.rsplit("/", 1)[1] for u in in_html] == ["up", "down"]
    assert in_text == in_html, "the text part lists the same vote links"
    text, markup = _parts(msg)
    assert "More like this" in markup and "Not for me" in markup
    assert re.search(r"    More like this: http\S+/up\n    Not for me: http\S+/down\n", text)

    # What a mail scanner or a link previewer does: open every link of the message.
    links = {html.unescape(u) for u in re.findall(r'href="([^"]+)"', markup)}
    links |= set(URL_RE.findall(text))
    links |= {str(msg["List-Unsubscribe"]).strip("<>")}
    ours = sorted(u for u in links if u.startswith(site.url))
    assert len(ours) >= 5
    for url in ours:
        for reply in (site.client.get(_path(url)), site.client.head(_path(url))):
            assert reply.status_code == 200, url
            assert reply.headers["referrer-policy"] == "no-referrer"
    assert _events(site, "feedback.vote") == []
    assert _events(site, "subscriber.unsubscribed") == []
    assert _status(site, "dee@example.org") == "active"


def test_one_tap_records_and_the_page_switches_and_undoes(site: Site, now) -> None:  # type: ignore[no-untyped-def]
    messages = _digests(site, now, ["dee@example.org", "eve@example.org"])
    up, down = (_path(u) for u in _vote_links(messages["dee@example.org"])[0])
    sid, pid = _ids(site, "dee@example.org")

    page = site.client.get(up)
    assert "More like this?" in page.text and "Diffusion for All" in page.text
    assert "in your topic “diffusion”" in page.text
    csrf = _csrf(page.text)
    done = site.client.post(up, data={"csrf": csrf, "vote": "up"})
    assert done.status_code == 200 and "Thanks: more like this" in done.text
    assert "will get more papers close to “Diffusion for All”" in done.text
    assert _taught(site) == {(sid, "diffusion"): ((pid, 1),)}

    site.client.post(up, data={"csrf": csrf, "vote": "up"})  # a second tap: nothing new
    switched = site.client.post(down, data={"csrf": csrf, "vote": "down"})
    assert "Thanks: not for you" in switched.text and "Undo my vote" in switched.text
    assert _taught(site) == {(sid, "diffusion"): ((pid, -1),)}
    undone = site.client.post(down, data={"csrf": _csrf(switched.text), "vote": "none"})
    assert "Vote taken back" in undone.text
    assert _taught(site) == {}

    votes = _events(site, "feedback.vote")
    assert [v["vote"] for v in votes] == ["up", "down", "none"]
    assert {(v["subscriber"], v["paper"], v["topic"], v["source"]) for v in votes} == {
        (sid, pid, "diffusion", "web")
    }
    with db.session_scope(engine=site.engine) as session:
        delivery = session.exec(
            select(Event.delivery_id).where(Event.kind == "feedback.vote")
        ).first()
    assert delivery is not None, "a vote names the digest it came from"


def test_forged_foreign_and_csrf_less_votes_are_refused(site: Site, now) -> None:  # type: ignore[no-untyped-def]
    messages = _digests(site, now, ["dee@example.org", "eve@example.org"])
    up = _path(_vote_links(messages["dee@example.org"])[0][0])
    eve_up = _path(_vote_links(messages["eve@example.org"])[0][0])
    _, _, token, paper, _ = up.split("/")
    assert up == f"/v/{token}/{paper}/up", "one signed start for the digest, then the paper"
    ident, mac = token.split(".")
    sid, did = ident.split("-")
    eve_mac = eve_up.split("/")[2].split(".")[1]
    bad = [
        f"{ident}.{mac[:-1]}{'A' if mac[-1] != 'A' else 'B'}/{paper}",
        f"{ident}.{mac[:10]}/{paper}",
        f"{sid}-{int(did) + 1}.{mac}/{paper}",  # another digest
        f"{ident}.{eve_mac}/{paper}",  # eve's MAC on dee's ids
        f"{ident}.{mac}/{int(paper) + 1}",  # a paper the digest does not hold
        f"{ident}.{mac}/{10**30}",  # nor any integer column
        f"{ident}.{mac}/{'9' * 5000}",  # nor a number Python reads without a limit
        f"{ident}.{mac}/-{paper}",
        f"{sid}-{did}-{paper}-0.{mac}",  # the per-paper links' shape, with this MAC
        f"{sid}.{mac}/{paper}",  # a preference token's shape
    ]
    unknown = site.client.get("/v/nothing")
    assert unknown.status_code == 404
    csrf = _csrf(site.client.get(up).text)
    for forged in bad:
        for reply in (
            site.client.get(f"/v/{forged}/up"),
            site.client.post(f"/v/{forged}/up", data={"csrf": csrf, "vote": "up"}),
        ):
            assert reply.status_code == 404, forged
            assert reply.text == unknown.text
    assert site.client.get(f"{up[:-3]}/sideways").status_code == 404
    with db.session_scope(engine=site.engine) as session:
        delivery = session.get(Delivery, int(did))
        assert delivery is not None
        items = snapshot.decode(snapshot.text_of(session.connection(), delivery) or "")
        shown = {i.paper_id for i in items if i.votable}
        everything = next((i for i in items if not i.votable), None)
    assert shown == {int(paper)}
    if everything is not None:  # a paper the digest holds without votes: none by hand either
        assert site.client.get(f"/v/{token}/{everything.paper_id}/up").status_code == 404

    # The button's POST needs the page's token, bound to this reader.
    eve_csrf = _csrf(site.client.get(eve_up).text)
    for data in ({"vote": "up"}, {"csrf": "1.x", "vote": "up"}, {"csrf": eve_csrf, "vote": "up"}):
        refused = site.client.post(up, data=data)
        assert refused.status_code == 400
        assert "This form was open too long, or did not come from this site" in refused.text
    assert site.client.post(up, data={"csrf": csrf, "vote": "sideways"}).status_code == 400
    assert _events(site, "feedback.vote") == []


def test_a_per_paper_vote_link_sent_before_still_works(site: Site, now) -> None:  # type: ignore[no-untyped-def]
    """Links in digests sent until 2026-11 signed each paper on its own (subscriber,
    digest, paper, topic): readers still tap them in old mail."""
    messages = _digests(site, now, ["dee@example.org", "eve@example.org"])
    up = _path(_vote_links(messages["dee@example.org"])[0][0])
    sid, pid = _ids(site, "dee@example.org")
    did = int(up.split("/")[2].split("-")[1].split(".")[0])
    with db.session_scope(engine=site.engine) as session:
        salt = session.get(Subscriber, sid).token_salt  # type: ignore[union-attr]
    key = secret_key(settings=site.settings)
    old = tokens.make_token(key=key, purpose=tokens.VOTE, ids=(sid, did, pid, 0), salt=salt)
    page = site.client.get(f"/v/{old}/up")
    assert page.status_code == 200 and "Diffusion for All" in page.text
    done = site.client.post(f"/v/{old}/up", data={"csrf": _csrf(page.text), "vote": "up"})
    assert "Thanks: more like this" in done.text
    assert _taught(site) == {(sid, "diffusion"): ((pid, 1),)}
    # The digest-wide token is not a per-paper one, nor the other way round.
    votes = tokens.make_token(key=key, purpose=tokens.VOTES, ids=(sid, did), salt=salt)
    assert site.client.get(f"/v/{votes}/up").status_code == 404
    assert site.client.get(f"/v/{old}/{pid}/up").status_code == 404


def test_a_vote_on_an_old_digest_still_counts(site: Site, now) -> None:  # type: ignore[no-untyped-def]
    """Readers catch up on old mail: a vote from yesterday's digest, tapped after today's
    arrived, is recorded against the digest it came from."""
    messages = _digests(site, now, ["dee@example.org"])
    old_up = _path(_vote_links(messages["dee@example.org"])[0][0])
    sid, pid = _ids(site, "dee@example.org")
    later = now + timedelta(days=1)
    add_paper(site.engine, title="Diffusion Again", abstract="Diffusion.", seen=later)
    plan_digests(engine=site.engine, settings=site.settings, now=later, due_only=False)
    deliver(site.engine, site.settings, FileBackend(directory=site.settings.outbox_dir), later)
    with db.session_scope(engine=site.engine) as session:
        digests = session.exec(
            select(Delivery.id).where(Delivery.subscriber_id == sid).order_by(Delivery.id)
        ).all()
    assert len(digests) == 2, "today's digest went out"

    page = site.client.get(old_up)
    assert page.status_code == 200 and "Diffusion for All" in page.text
    done = site.client.post(old_up, data={"csrf": _csrf(page.text), "vote": "up"})
    assert "Thanks: more like this" in done.text
    assert _taught(site) == {(sid, "diffusion"): ((pid, 1),)}
    assert [v["delivery"] for v in _events(site, "feedback.vote")] == [digests[0]]


def test_votes_are_rate_limited_per_subscriber(site: Site, now) -> None:  # type: ignore[no-untyped-def]
    """A reader's taps, not a script's loop: past VOTES_PER_HOUR a reader's votes are
    refused (and not recorded) while another reader's still count; and by every web
    process, counted in the ledger: a second one over the same database (behind a load
    balancer, or the first restarted) refuses them too."""
    messages = _digests(site, now, ["dee@example.org", "eve@example.org"])
    up, down = (_path(u) for u in _vote_links(messages["dee@example.org"])[0])
    csrf = _csrf(site.client.get(up).text)
    for k in range(VOTES_PER_HOUR):
        way = ("up", "down")[k % 2]
        reply = site.client.post((up, down)[k % 2], data={"csrf": csrf, "vote": way})
        assert reply.status_code == 200, k
    sid, pid = _ids(site, "dee@example.org")
    assert _taught(site) == {(sid, "diffusion"): ((pid, -1),)}  # the last one, down
    refused = site.client.post(up, data={"csrf": csrf, "vote": "up"})
    assert refused.status_code == 429 and "Too many votes; try again later." in refused.text
    assert _taught(site) == {(sid, "diffusion"): ((pid, -1),)}, "the refused vote changed nothing"
    assert len(_events(site, "feedback.vote")) == VOTES_PER_HOUR

    port = free_port()
    with (
        live_server(create_app(runtime=runtime_for(site.settings, site.engine)), port) as url,
        httpx.Client(base_url=url, timeout=10) as other,
    ):
        again = other.post(up, data={"csrf": csrf, "vote": "up"})
    assert again.status_code == 429 and "Too many votes; try again later." in again.text
    assert len(_events(site, "feedback.vote")) == VOTES_PER_HOUR

    eve_up = _path(_vote_links(messages["eve@example.org"])[0][0])
    eve = site.client.post(eve_up, data={"csrf": _csrf(site.client.get(eve_up).text), "vote": "up"})
    assert eve.status_code == 200 and "Thanks: more like this" in eve.text


def _preferences(msg: email.message.EmailMessage) -> str:
    text, _ = _parts(msg)
    return _path(re.search(r"Manage preferences:\n  (\S+)", text).group(1))  # type: ignore[union-attr]


def test_the_preference_centre_lists_votes_and_undoes_or_resets_them(site: Site, now) -> None:  # type: ignore[no-untyped-def]
    messages = _digests(site, now, ["dee@example.org", "eve@example.org"])
    up, down = (_path(u) for u in _vote_links(messages["dee@example.org"])[0])
    sid, pid = _ids(site, "dee@example.org")
    prefs = _preferences(messages["dee@example.org"])
    assert "What you taught your topics" not in site.client.get(prefs).text

    site.client.post(up, data={"csrf": _csrf(site.client.get(up).text), "vote": "up"})
    eve_up = _path(_vote_links(messages["eve@example.org"])[0][0])
    site.client.post(eve_up, data={"csrf": _csrf(site.client.get(eve_up).text), "vote": "up"})
    page = site.client.get(prefs)
    assert "What you taught your topics" in page.text
    assert "More like this: Diffusion for All" in " ".join(page.text.split())
    csrf = _csrf(page.text)

    for bad in (
        {"csrf": "1.x", "topic": "diffusion", "paper": str(pid)},
        {"csrf": csrf, "topic": "diffusion", "paper": str(pid + 1)},  # no such vote
        {"csrf": csrf, "topic": "video", "paper": str(pid)},  # no such topic
        {"csrf": csrf, "topic": "diffusion", "paper": "²"},
    ):
        assert site.client.post(f"{prefs}/votes", data=bad).status_code == 400
    assert _taught(site)[(sid, "diffusion")] == ((pid, 1),)

    undone = site.client.post(
        f"{prefs}/votes", data={"csrf": csrf, "topic": "diffusion", "paper": str(pid)}
    )
    assert undone.status_code == 200 and "Vote undone." in undone.text
    assert (sid, "diffusion") not in _taught(site)
    assert "What you taught your topics" not in undone.text

    site.client.post(down, data={"csrf": _csrf(site.client.get(down).text), "vote": "down"})
    other = add_paper(site.engine, title="Diffusion Elsewhere", abstract="Diffusion.", seen=now)
    with db.session_scope(engine=site.engine) as session:  # a second vote, as an operator's
        feedback.record_vote(
            session=session, subscriber=session.get(Subscriber, sid), query="diffusion",
            paper_id=other, vote=feedback.Vote.DOWN, source="cli", now=now,
        )  # fmt: skip
    assert len(_taught(site)[(sid, "diffusion")]) == 2
    reset = site.client.post(
        f"{prefs}/votes", data={"csrf": csrf, "topic": "diffusion", "action": "reset"}
    )
    assert "2 votes undone." in reset.text and (sid, "diffusion") not in _taught(site)
    assert len(_taught(site)) == 1, "eve's vote is hers alone"
    sources = [v["source"] for v in _events(site, "feedback.vote") if v["subscriber"] == sid]
    assert sources == ["web", "preferences", "web", "cli", "preferences", "preferences"]
