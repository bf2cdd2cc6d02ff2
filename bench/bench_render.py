"""Render + compose cost per email: pieces inlined once per run vs premailer on every email.

Generates 500 entries (realistic titles, ~150-word abstracts with some markup), 20 topics and
2,000 subscribers following 3 topics each, stores the entries in a throw-away SQLite file,
plans the digests with the real matcher, then measures:

- ours: ``Renderer.prepare`` per batch of 100 digests (as ``run.deliver_due`` does) and
  ``render`` + ``compose_message`` per digest;
- whole: ``Renderer.render_whole`` (one premailer call per email) + ``compose_message``, on a
  sample of the same digests.

It prints figures; it is not a timed test. Run: ``.venv/bin/python bench/bench_render.py``
(``--subscribers N --entries N --sample N`` to change the sizes).
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline import run
from pipeline.compose import compose_message
from pipeline.config import Settings, parse_settings
from pipeline.models import Digest, FeedItem
from pipeline.render import Renderer
from pipeline.store import Store

TOPICS = {
    "snn": ("Spiking neural networks", ["spiking neural network", "neuromorphic"]),
    "rl": ("Reinforcement learning", ["reinforcement learning", "policy gradient"]),
    "diffusion": ("Diffusion models", ["diffusion model", "score-based"]),
    "robots": ("Robot learning", ["robot", "manipulation"]),
    "llm": ("Language models", ["language model", "LLM"]),
    "vision": ("Computer vision", ["object detection", "segmentation"]),
    "graphs": ("Graph learning", ["graph neural network", "message passing"]),
    "causal": ("Causal inference", ["causal", "counterfactual"]),
    "federated": ("Federated learning", ["federated", "client drift"]),
    "bayes": ("Bayesian methods", ["bayesian", "variational inference"]),
    "speech": ("Speech", ["speech recognition", "text-to-speech"]),
    "quantum": ("Quantum ML", ["quantum", "qubit"]),
    "privacy": ("Privacy", ["differential privacy", "membership inference"]),
    "fairness": ("Fairness", ["fairness", "bias mitigation"]),
    "compression": ("Model compression", ["quantization", "pruning"]),
    "optim": ("Optimisation", ["stochastic gradient", "convergence rate"]),
    "theory": ("Learning theory", ["generalization bound", "sample complexity"]),
    "bio": ("ML for biology", ["protein", "single-cell"]),
    "climate": ("Climate and weather", ["weather forecasting", "climate"]),
    "recsys": ("Recommender systems", ["recommendation", "collaborative filtering"]),
}
FILLER = " ".join(
    [
        "we propose a method that improves results on standard benchmarks while reducing the cost of",
        "training and inference our analysis shows when the approach helps and when it does not and we",
        "release code data and trained models for others to build on experiments cover several settings",
        "including small and large scale regimes noisy labels distribution shift and limited compute",
    ]
).split(" ")
CONFIG = """
[digest]
title = "Paper Digest"
database = "{db}"
lookback = "3650d"
max_entries = 30

[[feeds]]
name = "arxiv"
url = "feeds/arxiv.xml"

[[feeds]]
name = "blog"
url = "feeds/blog.xml"
"""


def make_settings(
    folder: Path, subscribers: int, rng: random.Random, base_url: str | None = None
) -> Settings:
    text = CONFIG.format(db=folder / "bench.db")
    if base_url:
        text = text.replace("max_entries = 30\n", f'max_entries = 30\nbase_url = "{base_url}"\n')
    for name, (title, keywords) in TOPICS.items():
        text += f'\n[topics.{name}]\ntitle = "{title}"\nkeywords = {keywords!r}\n'.replace("'", '"')
    names = list(TOPICS)
    for i in range(subscribers):
        topics = rng.sample(names, 3)
        text += f'\n[[subscribers]]\nemail = "reader{i}@example.org"\nname = "Reader {i}"\n'
        text += f"topics = {topics!r}\n".replace("'", '"')
    return parse_settings(text, folder / "digest.toml")


def make_items(entries: int, rng: random.Random) -> list[FeedItem]:
    names = list(TOPICS)
    start = datetime(2026, 11, 1, tzinfo=UTC)
    items = []
    for i in range(entries):
        topics = rng.sample(names, rng.choice((1, 1, 2)))
        keywords = [rng.choice(TOPICS[t][1]) for t in topics]
        title = f"{keywords[0].capitalize()} for {' '.join(rng.sample(FILLER, 4))} at scale ({i})"
        words = [rng.choice(FILLER) for _ in range(150)]
        for k in keywords:
            words.insert(rng.randrange(len(words)), k)
        half = len(words) // 2
        summary = (
            f"<p>{' '.join(words[:half])}.</p><p>{' '.join(words[half:])} "
            f'<a href="https://example.org/code/{i}">code</a>.</p>'
        )
        items.append(
            FeedItem(
                feed="arxiv" if i % 5 else "blog",
                guid=f"https://example.org/abs/{i}",
                title=title,
                link=f"https://example.org/abs/{i}",
                summary_html=summary,
                authors=tuple(f"Author {rng.randrange(1000)}" for _ in range(rng.randint(1, 8))),
                published=start + timedelta(minutes=i),
            )
        )
    return items


def _ours(settings: Settings, digests: list[Digest], compose_args: dict[str, Any]) -> dict[str, float]:
    """One run as ``run.deliver_due`` does it: prepare per batch, then render + compose each."""
    renderer = Renderer(settings)
    prepare_s = render_s = compose_s = 0.0
    size = 0
    for b in range(0, len(digests), run.CLAIM_BATCH):
        batch = digests[b : b + run.CLAIM_BATCH]
        t0 = time.perf_counter()
        renderer.prepare(batch)
        prepare_s += time.perf_counter() - t0
        for digest in batch:
            t0 = time.perf_counter()
            rendered = renderer.render(digest)
            t1 = time.perf_counter()
            message = compose_message(digest, rendered, **compose_args)
            t2 = time.perf_counter()
            render_s += t1 - t0
            compose_s += t2 - t1
            size += len(message.data)
    t0 = time.perf_counter()
    for digest in digests:  # again, everything warm: the cost of one more subscriber
        compose_message(digest, renderer.render(digest), **compose_args)
    warm_s = time.perf_counter() - t0
    n = len(digests) / 1000  # seconds -> ms per email
    return {
        "prepare": prepare_s / n,
        "render": render_s / n,
        "compose": compose_s / n,
        "total": (prepare_s + render_s + compose_s) / n,
        "warm": warm_s / n,
        "calls": renderer.premailer_calls,
        "premailer": renderer.premailer_seconds,
        "size": size / len(digests),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=2000)
    parser.add_argument("--entries", type=int, default=500)
    parser.add_argument("--sample", type=int, default=40, help="emails rendered whole, for comparison")
    parser.add_argument("--repeat", type=int, default=3, help="runs of ours (medians, min, max)")
    parser.add_argument(
        "--base-url",
        metavar="URL",
        help="also time ours with this [digest] base_url (vote links beside every entry, signed "
        "footer links), runs alternating with the plain ones",
    )
    args = parser.parse_args()
    if args.base_url:  # (a throw-away key to sign the reader links with)
        os.environ.setdefault("DIGEST_WEB_SECRET", "bench-signing-key-" + "0123456789" * 4)
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        settings = make_settings(folder, args.subscribers, rng)
        now = datetime(2026, 12, 1, 7, 0, tzinfo=UTC)
        with Store(settings.digest.database_url) as store:
            store.sync_feeds({"arxiv": "feeds/arxiv.xml", "blog": "feeds/blog.xml"})
            store.add_items(make_items(args.entries, rng), now)
            t0 = time.perf_counter()
            digests = run.plan_digests(settings, store, settings.subscribers, now)
            plan_s = time.perf_counter() - t0
    compose_args = {
        "sender": settings.sender,
        "list_id": settings.list_id,
        "unsubscribe": ["mailto:digest@localhost.localdomain?subject=unsubscribe"],
    }
    entries = [d.entry_count for d in digests]
    print(
        f"{len(digests)} digests over {args.entries} entries, {len(TOPICS)} topics, 3 topics each; "
        f"entries per email: median {statistics.median(entries):.0f}, max {max(entries)}; "
        f"planned in {plan_s:.2f} s"
    )

    linked_settings = (
        make_settings(Path(tempfile.gettempdir()), args.subscribers, random.Random(7), args.base_url)
        if args.base_url
        else None
    )
    runs, linked_runs = [], []
    for _ in range(args.repeat):
        runs.append(_ours(settings, digests, compose_args))
        if linked_settings is not None:
            linked_runs.append(_ours(linked_settings, digests, compose_args))
    best = min(runs, key=lambda r: r["total"])
    n = len(digests)

    def spread(key: str) -> str:
        values = sorted(r[key] for r in runs)
        return f"median {statistics.median(values):.3f}, min {values[0]:.3f}, max {values[-1]:.3f}"

    print(f"\nours ({args.repeat} runs, a fresh Renderer each; ms per email):")
    print(
        f"  premailer calls    {best['calls']:.0f} per run of {n} emails (batches of {run.CLAIM_BATCH}), "
        f"{best['premailer']:.2f} s in all"
    )
    print(f"  prepare            {spread('prepare')}  (layout per subscriber, new pieces, premailer)")
    print(f"  render             {spread('render')}")
    print(f"  compose            {spread('compose')}")
    print(f"  total              {spread('total')}  ({1000 / best['total']:.0f} emails/s at best)")
    print(f"  warm, one more     {spread('warm')}  (render + compose once everything is inlined)")
    print(f"  mean message size  {best['size'] / 1024:.0f} KB")
    print(f"  peak RSS so far    {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    ours = best["total"]
    if linked_runs:
        print(f"\nwith base_url = {args.base_url} (same digests, runs alternating; ms per email):")
        for key in ("render", "compose", "total", "warm"):
            plain = statistics.median(r[key] for r in runs)
            linked = statistics.median(r[key] for r in linked_runs)
            low, low_linked = min(r[key] for r in runs), min(r[key] for r in linked_runs)
            print(
                f"  {key:<8} median {plain:.3f} -> {linked:.3f} ({linked / plain - 1:+.1%}), "
                f"min {low:.3f} -> {low_linked:.3f} ({low_linked / low - 1:+.1%})"
            )
        size = statistics.median(r["size"] for r in linked_runs)
        print(f"  mean message size  {size / 1024:.0f} KB")

    sample = digests[: args.sample]
    whole = Renderer(settings)
    t0 = time.perf_counter()
    for digest in sample:
        rendered = whole.render_whole(digest)
        compose_message(digest, rendered, **compose_args)
    per = (time.perf_counter() - t0) / len(sample) * 1000
    print(f"\nwhole-email premailer, {len(sample)} emails: {per:.1f} ms/email ({1000 / per:.0f} emails/s)")
    renderer = Renderer(settings)
    same = sum(renderer.render(d).html == whole.render_whole(d).html for d in sample[:10])
    print(f"  identical HTML both ways: {same}/10 checked")
    print(f"\nspeed-up: {per / ours:.0f}x")


if __name__ == "__main__":
    main()
