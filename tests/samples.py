"""Sample digests for the rendering tests, the screenshots and the benchmark's sanity checks,
and the titles each topic of the sample config (``conftest.BASE_CONFIG``) matches.

The real pipeline builds them: the feed files of ``tests/data`` (or given items) go through
parse and store into a real SQLite file, and ``run.plan_digests`` matches and groups them,
at a fixed time so that the output is the same on every run.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from conftest import BASE_CONFIG, DATA

from pipeline import run
from pipeline.config import Settings, parse_settings
from pipeline.models import Digest, FeedItem
from pipeline.store import Store

NOW = datetime(2026, 11, 30, 7, 0, tzinfo=UTC)
FEEDS = ("arxiv-cs", "hf-papers", "lab-blog")

# The titles each topic of BASE_CONFIG takes from the tests/data feeds; NEVER, none takes.
SPIKING = {
    "Surrogate Gradient Learning in Deep Spiking Neural Networks Without Batch Normalization",
    "Event-Driven Keyword Spotting on a Neuromorphic Chip at 40 Microwatts",
    "Liquid State Machines Revisited: Reservoir Size, Sparsity and Memory Capacity",
    "Energy-Efficient Spiking Transformers for Event Camera Object Detection",
    "A roadmap for neuromorphic hardware in the data centre",
}
RL = {
    "Offline Reinforcement Learning with Conservative Value Ensembles",
    "Reward Models That Know What They Don't Know: Uncertainty-Aware RLHF",
    "Multi-Armed Bandits with Delayed and Aggregated Feedback",
    "Model-Based Reinforcement Learning for Legged Robots from Ten Minutes of Data",
    "How we taught agents to explore with sparse rewards",
}
DIFFUSION = {
    "Consistency Distillation for One-Step Text-to-Image Diffusion Models",
    "Score-Based Generative Modeling of Protein Backbones with SE(3) Equivariance",
    "Diffusion models, explained with pictures",
}
ROBOTS = {
    "Model-Based Reinforcement Learning for Legged Robots from Ten Minutes of Data",
    "Diffusion Policies for Dexterous Manipulation with Tactile Feedback",
}
NEVER = {
    "Deep Reinforcement Learning for High-Frequency Trading Under Market Impact",  # excluded: trading
    "A Survey of Neuromorphic Computing: Devices, Algorithms and Applications",  # excluded: survey
    "We are hiring research engineers",
}

HOSTILE_SUMMARY = """
<p>Spiking neural networks <script>alert('x')</script>meet <b onclick="steal()">neuromorphic</b> chips.
<a href="javascript:alert(1)">click</a> <a href="jav&#x09;ascript:alert(2)">tab</a>
<a href="https://example.org/paper?utm_source=feed&amp;id=1" target="_blank">the paper</a>
<img src="https://tracker.example.com/pixel.gif" width="1" height="1">
<img src="https://images.example.org/figure1.png" alt="Figure 1" width="1200" height="800">
<img src="http://example.com/insecure.png"></p>
<form action="https://evil.example/"><input name="password"></form>
<iframe src="https://evil.example/frame"></iframe><style>body { display: none }</style>
<p>Template code {{ config }} {% for x in y %}{% endfor %} stays text; so does &lt;b&gt; and &amp;amp;.</p>
<svg onload="alert(3)"><circle r="1"/></svg><math><mi>x</mi></math>
"""

HOSTILE_ITEMS = (
    FeedItem(
        feed="arxiv-cs",
        guid="hostile-1",
        title="Spiking neural network {{ 7 * 7 }} {% raw %}<script>alert(1)</script> & \"quotes\" 'too'",
        link="javascript:alert(document.cookie)",
        summary_html=HOSTILE_SUMMARY,
        authors=("Eve <eve@evil.example>", "Mallory {{ secret }}"),
        published=NOW - timedelta(hours=1),
    ),
    FeedItem(
        feed="arxiv-cs",
        guid="hostile-2",
        title="SNN with a very long unbroken word " + "x" * 300,
        link="https://example.org/" + "long/" * 80,
        summary_html="<p>" + "neuromorphic " * 400 + "</p><p>" + "y" * 2000 + "</p>",
        authors=tuple(f"Author {i}" for i in range(40)),
        published=NOW - timedelta(hours=2),
    ),
    FeedItem(
        feed="arxiv-cs",
        guid="hostile-3",
        title="Neuromorphic: ünïcödé, emoji 🧠, RTL \u202eevil\u202c and zero\u200bwidth",
        link="https://example.org/ünïcödé?q=ä b",
        summary_html="<ul><li>SNN <pre>code  block\n  indented</pre></li></ul><blockquote>quote</blockquote>",
        authors=(),
        published=NOW - timedelta(hours=3),
    ),
)


def sample_config(tmp_path: Path, *, digest: str = "", extra: str = "") -> Settings:
    """The test config (``conftest.BASE_CONFIG``) on the tests/data feeds, state in ``tmp_path``."""
    text = BASE_CONFIG.format(
        arxiv=DATA / "arxiv-cs.xml", hf=DATA / "hf-papers.xml", blog=DATA / "lab-blog.xml"
    )
    text = text.replace('database = "state/digest.db"', f'database = "{tmp_path / "digest.db"}"')
    text = text.replace("[digest]\n", "[digest]\n" + digest + "\n", 1) + extra
    path = tmp_path / "digest.toml"
    path.write_text(text, encoding="utf-8")  # for the command line; Settings.path names it
    return parse_settings(text, path)


def sample_digests(
    settings: Settings, *, items: tuple[FeedItem, ...] = (), keep_empty: bool = False
) -> dict[str, Digest]:
    """Every subscriber's digest at ``NOW``, by address; ``items`` are stored after the feeds."""
    with Store(settings.digest.database_url) as store:
        for feed in FEEDS:  # one at a time, so that entry ids are the same on every run
            run.fetch_all(settings, store, feeds=[feed], clock=lambda: NOW)
        if items:
            store.add_items(list(items), NOW)
        digests = run.plan_digests(settings, store, settings.subscribers, NOW, keep_empty=keep_empty)
    return {d.subscriber: d for d in digests}
