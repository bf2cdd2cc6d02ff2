"""Topics end to end: a 50-entry feed, three subscribers with overlapping topics, the real CLI
(send over a loopback SMTP server, match, match --explain, check)."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from click.testing import Result
from conftest import FeedServer, SmtpServer, body_html, body_text, html_titles, smtp_section

from pipeline import run
from pipeline.config import load_settings
from pipeline.store import Store

CONFIG = """
[digest]
title = "Test Digest"
database = "state/digest.db"
lookback = "3650d"

[fetch]
timeout = "5s"

[[feeds]]
name = "ml-research"
url = "{research}"

[topics.rl]
title = "Reinforcement learning"
keywords = ["reinforcement learning", "RL", "bandit", "MDP", "policy gradient"]
exclude = ["trading"]

[topics.safety]
title = "LLM safety"
query = '(LLM OR "language model") AND (jailbreak OR "red teaming" OR alignment OR title:safety) -survey'

[topics.graphs]
title = "Graph learning"
keywords = ["graph neural network", "GNN"]
query = 'category:cs.SI AND "link prediction"'

[topics.scenes]
title = "3D scenes"
query = 'NeRF OR "neural radiance field" OR "Gaussian splatting" OR title:3D'
exclude = ["medical"]

[topics.people]
title = "People we follow"
query = 'author:"Richard Sutton" OR author:Bengio OR author:"Fei-Fei Li"'

[[subscribers]]
email = "ada@example.org"
topics = ["rl", "safety"]

[[subscribers]]
email = "grace@example.org"
topics = ["safety", "graphs", "people"]

[[subscribers]]
email = "alan@example.org"
topics = ["people", "rl", "scenes"]
"""

RL = {
    "Offline Reinforcement Learning with Conservative Value Ensembles",
    "Regret Bounds for Contextual Bandits with Delayed Feedback",
    "Solving Large MDPs with Factored Value Iteration",
    "Policy Gradient Methods Revisited: Variance, Baselines and Step Sizes",
    "A Tutorial on Temporal-Difference Learning",
    "Reward Models That Know What They Don't Know: Uncertainty-Aware RLHF",
    "Learning to Grasp from 3D Point Clouds",
    "Multi-Armed Bandits for Adaptive Clinical Trials",
    "Safe Exploration in Constrained MDPs",
    "RL Agents That Ask for Help",
    "The Bandit Book, Second Edition: Notes for Practitioners",
}
SAFETY = {
    "Reward Models That Know What They Don't Know: Uncertainty-Aware RLHF",
    "Jailbreak Attacks on Aligned LLMs via Persona Modulation",
    "Automated Red Teaming of Language Models with Curriculum Search",
    "Safety Fine-Tuning at Scale: Lessons from Deploying an LLM Assistant",
    "Constitutional Alignment without Human Labels",
    "Aligning Vision-Language Models with Human Preferences",
}
GRAPHS = {
    "Graph Neural Networks for Molecular Property Prediction",
    "Over-Smoothing in Deep GNNs: A Spectral View",
    "Link Prediction in Social Networks with Temporal Motifs",
    "Message Passing Is Not All You Need",
}
SCENES = {
    "Instant Neural Radiance Fields on Mobile GPUs",
    "Dynamic Gaussian Splatting for Monocular Video",
    "3D Hand Pose Estimation from a Single RGB Image",
    "Learning to Grasp from 3D Point Clouds",
}
PEOPLE = {
    "Policy Gradient Methods Revisited: Variance, Baselines and Step Sizes",
    "A Tutorial on Temporal-Difference Learning",
    "Constitutional Alignment without Human Labels",
    "GFlowNets as Amortized Samplers",
    "ImageNet at Fifteen: What the Benchmark Taught Us",
    "RL Agents That Ask for Help",
}
# Near misses: each looks like a topic but the rules say no.
NEVER = {
    "TempoRL: Learning When to Act",  # one word, not RL
    "URL Classification with Character-Level Transformers",
    "Deep Reinforcement Learning for High-Frequency Trading Under Market Impact",  # exclude trading
    "Why the Bitter Lesson Still Holds",  # Sutton is named in the summary, not an author
    "A Survey of Jailbreak Attacks and Defenses for Large Language Models",  # -survey
    "Scaling Laws for Language Model Pretraining on Code",  # "safety" only in the summary
    "Jailbreaking Image Classifiers with Adversarial Patches",  # no stemming, no LLM
    "Link Prediction for Drug Repurposing in Knowledge Graphs",  # not filed under cs.SI
    "Community Detection at Scale with Label Propagation",
    "NeRFs for Medical Volume Rendering",  # exclude medical
    "Monocular Depth Estimation Benchmarks Revisited",  # 3D only in the summary
    "Causal Representation Learning from Interventions",  # by Fei Li, not Fei-Fei Li
    "Red Teaming Autonomous Driving Stacks",  # no language model
    "Sparse Autoencoders Find Interpretable LLM Features",
}

# Each entry once, under the first of the subscriber's topics that matches it.
EXPECTED = {
    "ada@example.org": {"rl": RL, "safety": SAFETY - RL},
    "grace@example.org": {"safety": SAFETY, "graphs": GRAPHS, "people": PEOPLE - SAFETY},
    "alan@example.org": {"people": PEOPLE, "rl": RL - PEOPLE, "scenes": SCENES - RL},
}


def research_config(write_config: Callable[..., Path], url: str, smtp: str = "") -> Path:
    return write_config(CONFIG, smtp=smtp, feeds={"research": url})


def test_three_subscribers_with_overlapping_topics_get_exactly_their_entries(
    cli: Callable[..., Result],
    write_config: Callable[..., Path],
    smtp_server: SmtpServer,
    feed_server: FeedServer,
    tmp_path: Path,
) -> None:
    config = research_config(write_config, feed_server.url("ml-research.xml"), smtp_section(smtp_server))
    result = cli("--config", config, "send")
    assert result.exit_code == 0, result.output
    assert "feed ml-research: 50 new" in result.output
    assert "3 sent, 0 pending, 0 failed" in result.output

    with sqlite3.connect(tmp_path / "state" / "digest.db") as db:
        titles = dict(db.execute("select id, title from entries"))
        specs = dict(db.execute("select subscriber, spec from deliveries"))
    assert len(titles) == 50
    for address, sections in EXPECTED.items():
        spec = json.loads(specs[address])
        got = {s["topic"]: {titles[eid] for eid, _, _ in s["entries"]} for s in spec["sections"]}
        assert got == sections, address
        assert all(s["more"] == 0 for s in spec["sections"])
        wanted = set().union(*sections.values())
        (message,) = smtp_server.handler.to(address)
        assert html_titles(body_html(message)) == wanted
        assert not wanted & NEVER
    assert NEVER.isdisjoint(RL | SAFETY | GRAPHS | SCENES | PEOPLE)
    assert len(RL | SAFETY | GRAPHS | SCENES | PEOPLE | NEVER) == 39  # the other 11 match nothing

    # Each entry says why it is there: the hits, as written in the config.
    ada = body_text(smtp_server.handler.to("ada@example.org")[0])
    assert "title:safety" in ada and '"red teaming"' in ada
    hits = {
        titles[eid]: h
        for s in json.loads(specs["grace@example.org"])["sections"]
        for eid, _, h in s["entries"]
    }
    assert hits["Link Prediction in Social Networks with Temporal Motifs"] == [
        "category:cs.SI",
        '"link prediction"',
    ]
    assert hits["GFlowNets as Amortized Samplers"] == ["author:Bengio"]


def test_match_lists_matching_entries_with_score_and_hits(
    cli: Callable[..., Result], write_config: Callable[..., Path], feed_server: FeedServer
) -> None:
    config = research_config(write_config, feed_server.url("ml-research.xml"))
    assert cli("--config", config, "fetch").exit_code == 0

    result = cli("--config", config, "match", "--topic", "safety")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "safety (LLM safety): 6 matching entries"
    assert re.search(
        r"^8\s+2026-11-\d\d\s+Jailbreak Attacks on Aligned LLMs.*\s+LLM, jailbreak\s+https://",
        result.output,
        re.M,
    )
    assert re.search(r"^7\s+.*Safety Fine-Tuning at Scale.*\s+LLM, title:safety\s", result.output, re.M)
    assert not any(title in result.output for title in NEVER)
    assert "6 entries match" in lines[-1]

    # A subscriber's view: their topics in order, each entry once under the first.
    alan = cli("--config", config, "match", "--subscriber", "alan@example.org")
    assert alan.exit_code == 0, alan.output
    assert "people (People we follow): 6 matching entries" in alan.output
    assert "rl (Reinforcement learning): 8 matching entries" in alan.output
    assert "scenes (3D scenes): 3 matching entries" in alan.output
    assert alan.output.count("Learning to Grasp from 3D Point Clouds") == 1
    assert "17 entries match" in alan.output

    everything = cli("--config", config, "match", "--since", "3650d")
    assert everything.exit_code == 0
    assert "graphs (Graph learning): 4 matching entries" in everything.output


def test_match_since_counts_back_from_now(write_config: Callable[..., Path], feed_server: FeedServer) -> None:
    settings = load_settings(research_config(write_config, feed_server.url("ml-research.xml")))
    with Store(settings.digest.database_url) as store:
        run.fetch_all(settings, store)
        now = datetime(2026, 11, 28, tzinfo=UTC)
        recent = run.find_matches(settings, store, topics=["rl"], since=timedelta(days=2), clock=lambda: now)
        older = run.find_matches(settings, store, topics=["rl"], since=timedelta(days=30), clock=lambda: now)
    assert recent[0].matches  # (six of them: the check below is not about an empty list)
    assert {m.entry.title for m in recent[0].matches} < {m.entry.title for m in older[0].matches} == RL
    assert all(m.entry.published >= now - timedelta(days=2) for m in recent[0].matches)


def test_match_explain_says_why_each_topic_did_or_did_not_match(
    cli: Callable[..., Result], write_config: Callable[..., Path], feed_server: FeedServer
) -> None:
    config = research_config(write_config, feed_server.url("ml-research.xml"))
    assert cli("--config", config, "fetch").exit_code == 0

    grasp = cli("--config", config, "match", "--explain", "https://arxiv.org/abs/2611.20127")
    assert grasp.exit_code == 0, grasp.output
    out = grasp.output
    assert out.startswith("Learning to Grasp from 3D Point Clouds\n")
    assert "rl: match, score 1 (reinforcement learning)" in out
    assert "reinforcement learning (found in summary); RL (not found)" in out
    assert "scenes: match, score 3 (title:3D)" in out
    assert "safety: no match: the query is false" in out
    assert "graphs: no match: no keyword found; the query is false" in out
    assert "people: no match: the query is false" in out
    assert 'author:"Richard Sutton" (not found)' in out

    # by arXiv id, for one topic: the exclude that vetoed it
    nerf = cli("--config", config, "match", "--explain", "arXiv:2611.20125", "--topic", "scenes")
    assert nerf.exit_code == 0, nerf.output
    assert "scenes: no match: vetoed by exclude medical" in nerf.output
    assert "NeRF (found in title, summary)" in nerf.output
    assert "rl:" not in nerf.output

    tempo = cli("--config", config, "match", "--explain", "2611.20103", "-t", "rl")
    assert "rl: no match: no keyword found" in tempo.output
    assert "RL (not found)" in tempo.output

    missing = cli("--config", config, "match", "--explain", "https://example.org/nothing")
    assert missing.exit_code == 1
    assert "no stored entry has the link or arXiv id 'https://example.org/nothing'" in missing.output


def test_match_rejects_unknown_names(cli: Callable[..., Result], write_config: Callable[..., Path]) -> None:
    config = research_config(write_config, "https://example.org/feed.xml")
    topic = cli("--config", config, "match", "--topic", "rll")
    assert topic.exit_code == 2
    assert "unknown topic rll (topics: rl, safety, graphs, scenes, people)" in topic.output
    who = cli("--config", config, "match", "--subscriber", "nobody@example.org")
    assert who.exit_code == 2 and "unknown subscriber nobody@example.org" in who.output
    since = cli("--config", config, "match", "--since", "a week")
    assert since.exit_code == 2 and "bad duration 'a week'" in since.output
    unfollowed = cli("--config", config, "match", "-s", "ada@example.org", "-t", "graphs")
    assert (
        unfollowed.exit_code == 2 and "ada@example.org follows none of the topics graphs" in unfollowed.output
    )


def test_check_reports_query_errors_with_file_line_topic_and_position(
    cli: Callable[..., Result], write_config: Callable[..., Path]
) -> None:
    text = CONFIG.replace(
        "query = 'category:cs.SI AND \"link prediction\"'", "query = '(GNN OR \"link prediction\"'"
    ).replace('keywords = ["graph neural network", "GNN"]', 'keywords = ["graph neural network", "--"]')
    config = write_config(text, feeds={"research": "https://example.org/feed.xml"})
    line = text.splitlines().index("query = '(GNN OR \"link prediction\"'") + 1
    result = cli("--config", config, "check")
    assert result.exit_code == 2, result.output
    # the caret is under the "(" that is never closed (position 1)
    never_closed = 'topics.graphs.query: this "(" is never closed: add a ")" where its group ends'
    pointer = '\n    (GNN OR "link prediction"\n    ^\n'
    assert f"{config}:{line}: {never_closed}{pointer}" in result.output
    assert f"{config}:{line - 1}: topics.graphs.keywords[2]: '--' has no letters or digits" in result.output
    assert "2 problems in the config." in result.output

    # The other verbs refuse it the same way (exit 2), naming the file.
    send = cli("--config", config, "send", "--no-fetch")
    assert send.exit_code == 2, send.output
    assert f"{config}: {never_closed}{pointer}" in send.output
