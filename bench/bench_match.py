"""Benchmark: 10,000 subscribers (3 of 20 topics each) over 1,000 entries, matched and selected.

Not a test: it prints figures. Run it from the repository root:

    .venv/bin/python bench/bench_match.py                 # keywords and queries
    .venv/bin/python bench/bench_match.py --keywords-only # topics without queries

It builds a realistic state database in a temporary folder (1,000 arXiv-like entries over 7
days from four feeds, some carried by two feeds; a share of the subscribers already received
a digest two days ago, so they have taken entries and a later cutoff), then times the stages
that ``run.plan_digests`` chains: compile the topics, tokenise the entries, match every topic,
and select each subscriber's sections (first matching topic wins, ``max_entries`` keeps the
best), plus the store reads it does. The target is under 1 second for all of it.
"""

from __future__ import annotations

import argparse
import cProfile
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pipeline import plan, run
from pipeline.config import Settings, parse_settings
from pipeline.match import compile_topics, index_entries, match_topics
from pipeline.models import FeedItem
from pipeline.store import Store

NOW = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)

# Research areas: phrases that appear in titles and abstracts, and the arXiv categories they use.
AREAS: dict[str, tuple[list[str], list[str]]] = {
    "rl": (
        [
            "reinforcement learning",
            "policy gradient",
            "offline RL",
            "reward models",
            "Q-learning",
            "multi-armed bandits",
            "MDPs",
            "exploration",
        ],
        ["cs.LG", "cs.AI"],
    ),
    "diffusion": (
        [
            "diffusion models",
            "score-based generative models",
            "denoising",
            "consistency distillation",
            "latent diffusion",
            "classifier-free guidance",
        ],
        ["cs.CV", "cs.LG"],
    ),
    "llm": (
        [
            "large language models",
            "LLMs",
            "instruction tuning",
            "in-context learning",
            "chain-of-thought reasoning",
            "preference optimisation",
        ],
        ["cs.CL", "cs.LG"],
    ),
    "snn": (
        ["spiking neural networks", "SNNs", "neuromorphic hardware", "surrogate gradients", "event cameras"],
        ["cs.NE", "cs.ET"],
    ),
    "robots": (
        [
            "robot manipulation",
            "legged locomotion",
            "sim-to-real transfer",
            "dexterous grasping",
            "robot learning",
        ],
        ["cs.RO", "cs.LG"],
    ),
    "graphs": (
        ["graph neural networks", "GNNs", "message passing", "molecular graphs", "link prediction"],
        ["cs.LG", "q-bio.QM"],
    ),
    "vision": (
        [
            "object detection",
            "semantic segmentation",
            "vision transformers",
            "ViT backbones",
            "self-supervised pretraining",
        ],
        ["cs.CV"],
    ),
    "speech": (
        ["speech recognition", "ASR", "text-to-speech", "speaker verification", "audio tokenizers"],
        ["eess.AS", "cs.SD", "cs.CL"],
    ),
    "fairness": (
        ["fairness", "bias mitigation", "demographic parity", "disparate impact"],
        ["cs.CY", "cs.LG"],
    ),
    "privacy": (
        ["differential privacy", "federated learning", "membership inference", "secure aggregation"],
        ["cs.CR", "cs.LG"],
    ),
    "optim": (
        [
            "stochastic gradient descent",
            "Adam",
            "learning rate schedules",
            "convergence rates",
            "second-order methods",
        ],
        ["math.OC", "cs.LG"],
    ),
    "interp": (
        ["mechanistic interpretability", "sparse autoencoders", "saliency maps", "linear probes", "circuits"],
        ["cs.LG", "cs.AI"],
    ),
    "efficiency": (
        [
            "quantization",
            "pruning",
            "knowledge distillation",
            "low-rank adaptation",
            "LoRA",
            "mixture-of-experts",
        ],
        ["cs.LG", "cs.AR"],
    ),
    "causal": (
        ["causal inference", "treatment effects", "counterfactual explanations", "instrumental variables"],
        ["stat.ML", "stat.ME"],
    ),
    "timeseries": (
        ["time series forecasting", "anomaly detection", "state space models", "temporal point processes"],
        ["cs.LG", "stat.ML"],
    ),
    "recsys": (
        [
            "recommender systems",
            "collaborative filtering",
            "click-through rate prediction",
            "sequential recommendation",
        ],
        ["cs.IR"],
    ),
    "medical": (
        ["medical imaging", "radiology reports", "histopathology", "clinical notes"],
        ["eess.IV", "cs.CV"],
    ),
    "security": (
        ["adversarial examples", "jailbreak attacks", "certified robustness", "red teaming", "backdoors"],
        ["cs.CR", "cs.LG"],
    ),
    "code": (
        ["code generation", "program synthesis", "unit test generation", "software engineering agents"],
        ["cs.SE", "cs.CL"],
    ),
    "retrieval": (
        ["retrieval-augmented generation", "dense retrieval", "RAG pipelines", "re-ranking"],
        ["cs.IR", "cs.CL"],
    ),
    "3d": (
        [
            "neural radiance fields",
            "NeRFs",
            "Gaussian splatting",
            "3D reconstruction",
            "novel view synthesis",
        ],
        ["cs.CV", "cs.GR"],
    ),
    "theory": (
        ["generalization bounds", "PAC-Bayes", "sample complexity", "implicit regularization"],
        ["cs.LG", "stat.ML"],
    ),
    "multimodal": (
        ["vision-language models", "image captioning", "visual question answering", "CLIP"],
        ["cs.CV", "cs.CL"],
    ),
    "agents": (
        ["LLM agents", "tool use", "long-horizon planning", "web navigation"],
        ["cs.AI", "cs.CL"],
    ),
    "climate": (
        ["weather forecasting", "climate modelling", "precipitation nowcasting", "downscaling"],
        ["physics.ao-ph", "cs.LG"],
    ),
}

FIRST = [
    "Wei",
    "Aisha",
    "Lena",
    "Ravi",
    "Sofia",
    "Daniel",
    "Maria",
    "Thomas",
    "Chen",
    "Peter",
    "Yuki",
    "Olga",
    "Kwame",
    "Ines",
    "Mateo",
    "Priya",
    "Jonas",
    "Fatima",
    "Luca",
    "Hana",
    "Amir",
    "Zoë",
]
LAST = [
    "Hoffmann",
    "Patel",
    "Watanabe",
    "Marchetti",
    "Okafor",
    "Gonzalez",
    "Berg",
    "Rahman",
    "Novak",
    "Müller",
    "Kowalski",
    "Nguyen",
    "Silva",
    "Haddad",
    "Kim",
    "Ivanova",
    "Dubois",
    "Adeyemi",
    "Lindqvist",
    "Hinton",
    "Bengio",
    "Sutton",
]
VERBS = ["improves", "scales", "stabilises", "accelerates", "regularises", "simplifies", "unifies"]
OPENERS = [
    "Towards",
    "Revisiting",
    "Rethinking",
    "Scaling",
    "Understanding",
    "Efficient",
    "Robust",
    "Provable",
    "Learning",
    "On",
]
TASKS = [
    "long-context benchmarks",
    "low-resource settings",
    "edge devices",
    "noisy labels",
    "distribution shift",
    "few-shot transfer",
    "real-world deployment",
    "streaming data",
]
FILLER = [
    "We evaluate on {n} public benchmarks and release code and checkpoints.",
    "Across {n} datasets our method outperforms strong baselines by {p}% on average.",
    "We provide a theoretical analysis that explains when the approach fails.",
    "Ablations show that each component contributes to the final accuracy.",
    "The method adds negligible compute at inference time.",
    "Our experiments cover settings with up to {n} million parameters.",
    "We discuss limitations, broader impact and directions for future work.",
    "Results hold under {n} random seeds with tight confidence intervals.",
]

# Twenty topics: keywords as people write them, a few excludes and feed restrictions; with
# queries, some topics are written as boolean queries instead.
TOPICS: dict[str, dict[str, Any]] = {
    "rl": {
        "keywords": ["reinforcement learning", "RL", "bandit", "policy gradient", "MDP"],
        "exclude": ["trading"],
    },
    "diffusion": {"keywords": ["diffusion model", "score-based", "consistency distillation", "denoising"]},
    "llm": {"keywords": ["large language model", "LLM", "instruction tuning", "in-context learning"]},
    "spiking": {
        "keywords": ["spiking neural network", "SNN", "neuromorphic", "event camera"],
        "exclude": ["survey"],
    },
    "robots": {
        "keywords": ["robot", "legged", "manipulation", "sim-to-real"],
        "feeds": ["arxiv-ro", "lab-blog"],
    },
    "graphs": {"keywords": ["graph neural network", "GNN", "message passing", "molecular graph"]},
    "vision": {"keywords": ["object detection", "segmentation", "vision transformer", "ViT"]},
    "speech": {"keywords": ["speech recognition", "ASR", "text-to-speech", "speaker verification"]},
    "fairness": {"keywords": ["fairness", "bias mitigation", "demographic parity"]},
    "privacy": {"keywords": ["differential privacy", "federated learning", "membership inference"]},
    "optim": {"keywords": ["stochastic gradient descent", "Adam", "learning rate", "convergence"]},
    "interp": {"keywords": ["interpretability", "sparse autoencoder", "saliency", "probe"]},
    "efficiency": {"keywords": ["quantization", "pruning", "distillation", "LoRA", "mixture-of-experts"]},
    "causal": {"keywords": ["causal inference", "treatment effect", "counterfactual"]},
    "timeseries": {"keywords": ["time series", "forecasting", "anomaly detection", "state space model"]},
    "recsys": {"keywords": ["recommender system", "collaborative filtering", "click-through rate"]},
    "medical": {"keywords": ["medical imaging", "radiology", "histopathology", "clinical"]},
    "security": {"keywords": ["adversarial example", "jailbreak", "certified robustness", "backdoor"]},
    "3d": {"keywords": ["neural radiance field", "NeRF", "Gaussian splatting", "3D reconstruction"]},
    "agents": {"keywords": ["LLM agent", "tool use", "planning", "web navigation"]},
}
QUERIES: dict[str, str] = {
    "rl": '("reinforcement learning" OR RL OR bandit OR MDP OR "policy gradient") -trading',
    "llm": '(LLM OR "large language model") AND NOT title:survey OR "instruction tuning"',
    "robots": "(robot OR legged OR manipulation OR sim-to-real) AND (feed:arxiv-ro OR feed:lab-blog)",
    "security": '(jailbreak OR "adversarial example" OR backdoor OR "red teaming") AND NOT category:cs.SE',
    "3d": 'category:cs.CV AND (NeRF OR "neural radiance field" OR "Gaussian splatting") OR title:3D',
    "agents": '"LLM agent" OR ("tool use" AND LLM) OR author:Sutton OR "web navigation"',
}
FEEDS = ["arxiv-lg", "arxiv-cv", "arxiv-ro", "hf-papers", "lab-blog"]


def make_items(rng: random.Random, count: int) -> list[FeedItem]:
    """``count`` distinct papers; about one in six is carried by a second feed too."""
    items = []
    names = list(AREAS)
    for n in range(count):
        areas = rng.sample(names, rng.choice([1, 1, 2]))
        phrases = [p for a in areas for p in AREAS[a][0]]
        main = rng.choice(AREAS[areas[0]][0])
        title = rng.choice(
            [
                f"{rng.choice(OPENERS)} {main.capitalize()} for {rng.choice(TASKS).capitalize()}",
                f"{main.capitalize()} {rng.choice(VERBS)} {rng.choice(phrases)}",
                f"{rng.choice(OPENERS)} {rng.choice(phrases)}: {main} under {rng.choice(TASKS)}",
            ]
        )
        sentences = [
            f"We study {main} in the context of {rng.choice(TASKS)}.",
            f"Existing approaches to {rng.choice(phrases)} rely on heuristics that break under "
            f"{rng.choice(TASKS)}.",
            f"We propose a method that {rng.choice(VERBS)} {rng.choice(phrases)} and "
            f"{rng.choice(VERBS)} training.",
        ]
        sentences += [
            rng.choice(FILLER).format(n=rng.randint(2, 40), p=rng.randint(1, 30))
            for _ in range(rng.randint(4, 8))
        ]
        if rng.random() < 0.5:
            sentences.insert(2, f"Unlike prior work on {rng.choice(phrases)}, we need no extra labels.")
        published = NOW - timedelta(minutes=rng.randint(0, 7 * 24 * 60))
        arxiv = f"2611.{10000 + n:05d}"
        categories = tuple(dict.fromkeys(c for a in areas for c in AREAS[a][1]))
        feed = "arxiv-ro" if "robots" in areas else ("arxiv-cv" if "cs.CV" in categories else "arxiv-lg")
        feed = feed if rng.random() < 0.8 else rng.choice(["hf-papers", "lab-blog"])
        authors = tuple(f"{rng.choice(FIRST)} {rng.choice(LAST)}" for _ in range(rng.randint(1, 6)))
        summary = "<p>" + " ".join(sentences) + "</p>"
        for carrier in [feed] + (["hf-papers"] if rng.random() < 0.17 and feed != "hf-papers" else []):
            items.append(
                FeedItem(
                    feed=carrier,
                    guid=f"oai:arXiv.org:{arxiv}v1" if carrier.startswith("arxiv") else f"{carrier}:{arxiv}",
                    title=title,
                    link=f"https://arxiv.org/abs/{arxiv}",
                    summary_html=summary,
                    authors=authors,
                    categories=categories,
                    published=published,
                    arxiv_id=arxiv,
                )
            )
    return items


def make_settings(folder: Path, rng: random.Random, subscribers: int, queries: bool) -> Settings:
    lines = ["[digest]", 'database = "state.db"', 'lookback = "7d"', "max_entries = 30", ""]
    for feed in FEEDS:
        lines += ["[[feeds]]", f'name = "{feed}"', f'url = "https://feeds.example.org/{feed}.xml"', ""]
    for name, topic in TOPICS.items():
        lines.append(f"[topics.{name}]")
        if queries and name in QUERIES:
            lines.append(f"query = {QUERIES[name]!r}")
        else:
            lines.append("keywords = [" + ", ".join(f'"{k}"' for k in topic["keywords"]) + "]")
        for key in ("exclude", "feeds"):
            if key in topic and not (queries and name in QUERIES):
                lines.append(f"{key} = [" + ", ".join(f'"{k}"' for k in topic[key]) + "]")
        lines.append("")
    names = list(TOPICS)
    for n in range(subscribers):
        chosen = rng.sample(names, 3)
        lines += [
            "[[subscribers]]",
            f'email = "reader{n}@example.org"',
            "topics = [" + ", ".join(f'"{t}"' for t in chosen) + "]",
            "",
        ]
    path = folder / "digest.toml"
    text = "\n".join(lines)
    path.write_text(text, encoding="utf-8")
    return parse_settings(text, path)


def best_of(repeat: int, func: Callable[[], Any]) -> tuple[float, Any]:
    """The best wall time of ``repeat`` calls (the least disturbed by other work), and the result."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = func()
        times.append(time.perf_counter() - start)
    return min(times), result


def calibrate() -> float:
    """Seconds for a fixed pure-Python loop: how fast (or how busy) this machine is right now."""

    def loop() -> int:
        total = 0
        for i in range(1_000_000):
            total += i
        return total

    return best_of(5, loop)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=1000)
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--prior", type=int, default=2000, help="subscribers who got a digest 2 days ago")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keywords-only", action="store_true", help="no topic uses a query")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="also print a profile of plan_digests")
    args = parser.parse_args()
    rng = random.Random(args.seed)

    with tempfile.TemporaryDirectory(prefix="digest-bench-") as tmp:
        folder = Path(tmp)
        print(f"setting up: {args.entries} entries, {args.subscribers} subscribers ...", flush=True)
        settings = make_settings(folder, rng, args.subscribers, queries=not args.keywords_only)
        with Store(settings.digest.database_url) as store:
            items = make_items(rng, args.entries)
            earlier = [i for i in items if i.published and i.published <= NOW - timedelta(days=2)]
            store.add_items(earlier, NOW - timedelta(days=2))
            # A share of the subscribers got a digest two days ago: they have taken entries.
            prior = settings.subscribers[: args.prior]
            digests = run.plan_digests(settings, store, prior, NOW - timedelta(days=2))
            store.enqueue([run.queued_digest(settings, d) for d in digests])
            store.mark_checked([s.email for s in prior], NOW - timedelta(days=2))
            store.add_items(items, NOW)

            entries = store.entries_since(NOW - settings.digest.lookback)
            topics_used = {t: settings.topics[t] for t in TOPICS}
            print(
                f"stored entries: {len(entries)}; topics: {len(topics_used)} "
                f"({0 if args.keywords_only else len(QUERIES)} with a query); "
                f"subscribers: {len(settings.subscribers)} ({len(prior)} with an earlier digest)"
            )

            t_compile, topics = best_of(args.repeat, lambda: compile_topics(topics_used))
            t_index, documents = best_of(args.repeat, lambda: index_entries(entries))
            t_match, matches = best_of(args.repeat, lambda: match_topics(topics, documents))
            counts = sorted(len(m) for m in matches.values())
            print(
                f"matches per topic: min {counts[0]}, median {statistics.median(counts):.0f}, "
                f"max {counts[-1]}, total {sum(counts)}"
            )

            emails = [s.email for s in settings.subscribers]
            t_states, _ = best_of(args.repeat, store.subscriber_states)
            t_entries, _ = best_of(args.repeat, lambda: store.entries_since(NOW - settings.digest.lookback))
            matched = sorted({m.entry.id for found in matches.values() for m in found})
            t_taken, _ = best_of(args.repeat, lambda: store.taken_entries(emails, matched))
            t_reads = t_states + t_entries + t_taken
            states = store.subscriber_states()
            cutoffs = {
                sub.email: ((states[sub.email].last_checked_at if sub.email in states else None) or NOW)
                - settings.digest.lookback
                for sub in settings.subscribers
            }
            taken = store.taken_entries(emails, matched)
            t_select, _ = best_of(
                args.repeat,
                lambda: plan.select_digests(settings, settings.subscribers, matches, taken, cutoffs, NOW),
            )
            t_plan, planned = best_of(
                args.repeat, lambda: run.plan_digests(settings, store, settings.subscribers, NOW)
            )
            shown = sum(d.entry_count for d in planned)
            more = sum(d.more_count for d in planned)
            how = "select_digests"

            print(
                f"digests planned: {len(planned)}; entries shown {shown} "
                f"({shown / max(1, len(planned)):.1f} per digest), cut by max_entries {more}"
            )
            print()
            print(f"  compile 20 topics            {t_compile * 1000:8.1f} ms")
            print(f"  tokenise {len(entries)} entries        {t_index * 1000:8.1f} ms")
            print(f"  match 20 topics              {t_match * 1000:8.1f} ms")
            print(
                f"  store reads                  {t_reads * 1000:8.1f} ms   (subscriber states "
                f"{t_states * 1000:.0f}, entries {t_entries * 1000:.0f}, taken {t_taken * 1000:.0f})"
            )
            print(f"  per-subscriber selection     {t_select * 1000:8.1f} ms   ({how})")
            print(f"  plan_digests, all of it      {t_plan * 1000:8.1f} ms   (best of {args.repeat})")
            pure = t_compile + t_index + t_match + t_select
            print(f"  compile + tokenise + match + selection {pure * 1000:8.1f} ms")
            if args.profile:
                cProfile.runctx(
                    "run.plan_digests(settings, store, settings.subscribers, NOW)",
                    globals(),
                    {"settings": settings, "store": store},
                    sort="tottime",
                )
            print(
                f"machine: a 1,000,000-step Python loop takes {calibrate() * 1000:.0f} ms right now "
                "(compare runs by it: other work on the machine slows everything)"
            )
            print(
                f"target, under 1 s: matching and selection {'meet' if pure < 1 else 'MISS'} it; "
                f"all of plan_digests with its store reads {'meets' if t_plan < 1 else 'MISSES'} it"
            )


if __name__ == "__main__":
    main()
