"""The matching rules (pipeline/match/__init__.py's docstring, README "Topics") as tables, plus properties."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from conftest import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import match
from pipeline.config import TopicConfig
from pipeline.errors import MatchError
from pipeline.match import (
    compile_topic,
    compile_topics,
    explain,
    fold,
    forms,
    hit_spans,
    index_entries,
    index_entry,
    match_topics,
    parse_query,
    plural,
    same_word,
    words,
)
from pipeline.models import Entry

README = ROOT / "README.md"
T0 = datetime(2026, 11, 27, 12, tzinfo=UTC)


def entry(
    title: str = "",
    summary: str = "",
    *,
    authors: tuple[str, ...] = (),
    categories: tuple[str, ...] = (),
    feeds: tuple[str, ...] = ("arxiv-cs",),
    id: int = 1,
    age: int = 0,
) -> Entry:
    published = T0 - timedelta(hours=age)
    return Entry(
        id, title, f"https://example.org/{id}", summary, authors, categories, published, published, feeds
    )


def topic(
    keywords: tuple[str, ...] = (),
    query: str | None = None,
    exclude: tuple[str, ...] = (),
    feeds: tuple[str, ...] = (),
) -> match.CompiledTopic:
    config = TopicConfig(keywords=list(keywords), query=query, exclude=list(exclude), feeds=list(feeds))
    return compile_topic("t", config)


def selected(compiled: match.CompiledTopic, *entries: Entry) -> list[int]:
    return [m.entry.id for m in match_topics({"t": compiled}, index_entries(entries))["t"]]


def matches(compiled: match.CompiledTopic, e: Entry) -> bool:
    return bool(selected(compiled, e))


# --- the spec is written once --------------------------------------------------------------------


def test_module_docstring_is_the_readme_topics_section() -> None:
    section = README.read_text(encoding="utf-8").split("\n## Topics\n", 1)[1]
    doc = match.__doc__ or ""
    rules = doc[doc.index("\n\n") :]
    assert " ".join(rules.split()) in " ".join(section.split())


# --- words ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        # the examples of the rule
        ("network", "networks"),
        ("SNN", "SNNs"),
        ("MDP", "MDPs"),
        ("policy", "policies"),
        ("bandit", "bandits"),
        # the rest of "simple English plural": es after s, x, z, ch, sh; ies after a consonant
        ("match", "matches"),
        ("cache", "caches"),
        ("bus", "buses"),
        ("bias", "biases"),
        ("box", "boxes"),
        ("class", "classes"),
        ("GPU", "GPUs"),
        ("movie", "movies"),
        ("day", "days"),
        ("query", "queries"),
        ("1990", "1990s"),
        # case and accents
        ("Réseau", "reseau"),
        ("NAÏVE", "naive"),
        ("Gödel", "godel"),
        ("Re\u0301seau", "réseau"),  # decomposed accent (NFD) is one word too
        ("straße", "STRASSE"),
        ("\U0001d71c", "\u03b1"),  # compatibility forms: mathematical capital alpha is alpha
        ("ﬁne", "FINE"),
    ],
)
def test_same_word_folds_case_accents_and_the_simple_plural(a: str, b: str) -> None:
    assert same_word(a, b) and same_word(b, a)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        # no other stemming
        ("learn", "learning"),
        ("network", "networked"),
        ("policy", "policing"),
        ("model", "modelling"),
        ("jailbreak", "jailbreaking"),
        ("child", "children"),  # irregular plurals do not fold
        ("analysis", "analyses"),
        ("mouse", "mice"),
        # the plural relation is not transitive: ca ~ cas ~ cases, yet case is not CA
        ("CA", "case"),
        ("DO", "dose"),
        ("RL", "URL"),
    ],
)
def test_other_word_forms_do_not_match(a: str, b: str) -> None:
    assert not same_word(a, b) and not same_word(b, a)


def test_words_split_on_everything_but_letters_and_digits() -> None:
    assert words("Score-based (RL)/URL: SNNs_2") == ["score", "based", "rl", "url", "snns", "2"]
    assert words("Réseaux à impulsions, «naïfs»") == ["reseaux", "a", "impulsions", "naifs"]


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=5))
def test_fold_is_idempotent_so_a_word_always_matches_itself(word: str) -> None:
    assert fold(fold(word)) == fold(word)
    for w in words(word):
        assert same_word(w, w)


def test_plural_and_forms() -> None:
    assert [plural(w) for w in ("bus", "box", "match", "wish", "policy", "day", "snn", "a")] == [
        "buses",
        "boxes",
        "matches",
        "wishes",
        "policies",
        "days",
        "snns",
        None,
    ]
    assert forms("Policies") == {"policies", "policy", "policie", "policieses"}
    assert fold("ÉCOLE") == "ecole"


# --- keywords ------------------------------------------------------------------------------------

KEYWORD_TABLE = [
    # (keyword, title, expected): the keyword rule, in the title
    ("RL", "RL", True),
    ("RL", "Offline (RL) agents", True),
    ("RL", "RL-based control", True),
    ("RL", "rl_baselines", True),
    ("RL", "URL shortening at scale", False),
    ("RL", "TempoRL: learning when to act", False),
    ("RL", "RLHF for chat models", False),
    ("score-based", "score-based generative models", True),
    ("score-based", "Score Based Models", True),
    ("score-based", "score/based", True),
    ("score-based", "scorebased models", False),
    ("score based", "Score-Based", True),
    ("diffusion model", "Diffusion Models", True),
    ("diffusion model", "solution-diffusion model of membranes", True),
    ("diffusion model", "diffusion of a model", False),
    ("diffusion model", "model diffusion", False),
    ("spiking neural network", "Deep Spiking Neural Networks", True),
    ("spiking neural network", "spiking, neural-network", True),
    ("graph neural network", "graph neural nets", False),
    ("GPT-4", "GPT 4 is evaluated", True),
    ("GPT-4", "GPT4 is evaluated", False),
    ("MDP", "Solving MDPs", True),
    ("MDPs", "an MDP", True),
    ("policy", "Policies that generalise", True),
    ("policies", "a policy", True),
    ("bandit", "Contextual Bandits", True),
    ("SNN", "SNNs on chips", True),
    ("networks", "a network", True),
    ("réseau", "RESEAU de neurones", True),
    ("reseau", "Réseau", True),
    ("naïve Bayes", "Naive Bayes strikes back", True),
    ("café", "CAFÉS", True),
    ("learning", "learn to act", False),
]


@pytest.mark.parametrize(("keyword", "title", "expected"), KEYWORD_TABLE)
def test_keyword_rule_in_title(keyword: str, title: str, expected: bool) -> None:
    assert matches(topic((keyword,)), entry(title)) is expected


@pytest.mark.parametrize(("keyword", "summary", "expected"), KEYWORD_TABLE)
def test_keyword_rule_in_summary(keyword: str, summary: str, expected: bool) -> None:
    assert matches(topic((keyword,)), entry("Untitled", f"<p>{summary}</p>")) is expected


@pytest.mark.parametrize(
    ("keyword", "e", "expected"),
    [
        # the summary: HTML stripped, entities decoded
        ("SNN", entry("x", "<p>We train <b>SNNs</b> on chips</p>"), True),
        ("café", entry("x", "<p>caf&eacute; &amp; bar</p>"), True),
        ("RL", entry("x", "<p>&lt;RL&gt; tags</p>"), True),
        ("RL", entry("x", "<script>RL()</script><p>nothing</p>"), False),
        # block tags separate words; a phrase still runs on from one paragraph to the next
        ("foobar", entry("x", "<p>foo</p><p>bar</p>"), False),
        ("bar", entry("x", "<p>foo</p><p>bar</p>"), True),
        ("foo bar", entry("x", "<p>foo</p><p>bar</p>"), True),
        ("bar", entry("x", "foo<br>bar"), True),
        # a phrase does not run from the title into the summary
        ("spiking network", entry("Deep spiking", "<p>networks on chips</p>"), False),
        # keywords search the title and the summary only
        ("Hinton", entry("x", authors=("Geoffrey Hinton",)), False),
        ("LG", entry("x", categories=("cs.LG",)), False),
        ("arxiv", entry("x", feeds=("arxiv-cs",)), False),
    ],
)
def test_searchable_text(keyword: str, e: Entry, expected: bool) -> None:
    assert matches(topic((keyword,)), e) is expected


def test_any_keyword_matches() -> None:
    t = topic(("RL", "bandit"))
    assert sorted(selected(t, entry("RL", id=1), entry("bandits", id=2), entry("neither", id=3))) == [1, 2]


# --- queries -------------------------------------------------------------------------------------

DOC = entry(
    "Regret of Contextual Bandits with Delayed Feedback",
    "<p>We study bandits in reinforcement learning (RL) with delayed rewards; diffusion models too.</p>",
    authors=("Geoffrey Hinton", "Yann LeCun"),
    categories=("cs.LG", "stat.ML"),
    feeds=("arxiv-cs", "hf-papers"),
)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("RL", True),
        ("URL", False),
        ("RL AND bandit", True),
        ("RL AND trading", False),
        ("RL OR trading", True),
        ("trading OR URL", False),
        ("RL bandit", True),  # juxtaposition is AND
        ("RL trading", False),
        ("RL NOT trading", True),
        ("RL NOT bandit", False),
        ("RL -trading", True),
        ("RL -bandit", False),
        ('RL -"diffusion model"', False),
        ("RL AND NOT (trading OR URL)", True),
        ("(RL OR trading) AND regret", True),
        ("(trading OR URL) AND regret", False),
        # NOT binds tighter than AND, AND tighter than OR
        ("trading AND URL OR regret", True),
        ("trading AND (URL OR regret)", False),
        ("regret OR trading AND URL", True),
        ("-trading regret", True),
        ("NOT NOT RL", True),
        # quoted phrases follow the keyword rule
        ('"diffusion model"', True),
        ('"model diffusion"', False),
        ('"delayed feedback"', True),
        ('"contextual bandit"', True),
        # upper-case operators only: lower-case and/or/not are words to find
        ("RL and bandit", False),
        ("RL or trading", False),
        # field prefixes
        ("title:regret", True),
        ("title:RL", False),
        ("summary:RL", True),
        ("summary:regret", False),
        ("Title:Regret", True),
        ('title:"delayed feedback"', True),
        ("author:Hinton", True),
        ('author:"Yann LeCun"', True),
        ('author:"Hinton Yann"', False),  # a phrase does not run from one author into the next
        ("author:bandit", False),
        ("category:cs.LG", True),
        ('category:"cs.LG"', True),
        ("category:stat", True),
        ("category:cs.CV", False),
        ("feed:hf-papers", True),
        ("feed:lab-blog", False),
        ("Hinton", False),  # a term without prefix searches title and summary only
        ("title:regret author:LeCun -category:cs.CV", True),
        ("title:regret (author:Bengio OR feed:lab-blog)", False),
    ],
)
def test_query(query: str, expected: bool) -> None:
    assert matches(topic(query=query), DOC) is expected


def test_keywords_or_query() -> None:
    t = topic(("RL",), query="bandit AND regret")
    assert sorted(
        selected(
            t,
            entry("RL only", id=1),
            entry("bandit regret", id=2),
            entry("bandit only", id=3),
            entry("nothing", id=4),
        )
    ) == [1, 2]


def test_exclude_vetoes_keywords_and_query() -> None:
    t = topic(("RL",), query="bandit", exclude=("trading", "survey"))
    assert selected(
        t,
        entry("RL for trading", id=1),
        entry("A survey of bandits", id=2),
        entry("Surveys of RL", id=3),  # exclude keywords follow the keyword rule: plurals too
        entry("RL and bandits", id=4),
    ) == [4]


def test_feeds_restrict() -> None:
    t = topic(("RL",), feeds=("hf-papers", "lab-blog"))
    assert sorted(
        selected(
            t,
            entry("RL", feeds=("arxiv-cs",), id=1),
            entry("RL", feeds=("arxiv-cs", "hf-papers"), id=2),
            entry("RL", feeds=("lab-blog",), id=3),
        )
    ) == [2, 3]


@pytest.mark.parametrize(
    ("query", "message", "position"),
    [
        # the caret is under the "(" that is never closed, not at the end of the query
        ("(RL OR bandit", 'topics.t.query: this "(" is never closed: add a ")" where its group ends', 1),
        ("RL OR", 'topics.t.query: expected a term after "OR"', 6),
        ("RL AND AND bandit", 'topics.t.query: expected a term after "AND", found "AND"', 8),
        ("OR RL", 'topics.t.query: expected a term, found "OR"', 1),
        ("RL)", 'topics.t.query: this ")" has no "(" before it to close', 3),
        ("()", 'topics.t.query: expected a term after "(", found ")"', 2),
        ("RL NOT", 'topics.t.query: expected a term after "NOT"', 7),
        ("RL - bandit", 'topics.t.query: "-" must be followed by a term, with no space: like -survey', 4),
        ('RL "delayed feedback', 'topics.t.query: this quote is never closed: add a " after the phrase', 4),
        ('RL ""', "topics.t.query: '\"\"' has no letters or digits", 4),
        ("RL !!", 'topics.t.query: "!!" has no letters or digits', 4),
        ("titel:RL", 'topics.t.query: unknown field "titel:"', 1),
        ("RL title: bandit", 'topics.t.query: expected a term or "phrase" right after "title:"', 10),
        ("", "topics.t.query: the query is empty", 1),
        ("   ", "topics.t.query: the query is empty", 4),
        # a problem of the whole query: no position
        ("NOT survey", "topics.t.query: this query matches entries that contain none of its terms", None),
        ("RL OR -survey", "topics.t.query: this query matches entries that contain none", None),
        ("(" * 60 + "RL" + ")" * 60, "topics.t.query: parentheses and NOTs nest more than 50 deep here", 51),
    ],
)
def test_query_errors_name_the_topic_and_the_position(query: str, message: str, position: int | None) -> None:
    with pytest.raises(MatchError) as info:
        topic(query=query)
    assert str(info.value).startswith(message)
    assert info.value.problems[0].key == ("topics", "t", "query")
    assert info.value.problems[0].position == position


def test_compile_topics_lists_every_problem_with_its_key() -> None:
    with pytest.raises(MatchError) as info:
        compile_topics(
            {
                "a": TopicConfig(keywords=["RL", "--"], query="x OR"),
                "b": TopicConfig(keywords=["ok"], exclude=["?"]),
                "c": TopicConfig(query="fine"),
            }
        )
    assert [(p.key, p.position, str(p)) for p in info.value.problems] == [
        (("topics", "a", "keywords", 1), None, "topics.a.keywords[2]: '--' has no letters or digits"),
        (
            ("topics", "a", "query"),
            5,
            'topics.a.query: expected a term after "OR"\n    x OR\n        ^',
        ),
        (("topics", "b", "exclude", 0), None, "topics.b.exclude[1]: '?' has no letters or digits"),
    ]


# --- ranking -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("t", "e", "score", "hits"),
    [
        # a title hit weighs 3, a summary hit 1, summed over distinct keywords
        (topic(("RL", "bandit")), entry("RL with bandits", "<p>RL</p>"), 7, ("RL", "bandit")),
        (topic(("RL", "rl", "RLs")), entry("RL"), 3, ("RL",)),  # the same keyword counts once
        (topic(("RL",)), entry("x", "<p>RL, RL and RL</p>"), 1, ("RL",)),  # once per field, not per use
        # a query term counts where it searches: title: only the title, summary: only the summary
        (topic(query="title:diffusion"), entry("Diffusion", "<p>diffusion</p>"), 3, ("title:diffusion",)),
        (topic(query="summary:diffusion"), entry("Diffusion", "<p>diffusion</p>"), 1, ("summary:diffusion",)),
        # author:, category:, feed: hits weigh 1
        (topic(query="author:Hinton OR RL"), entry("x", authors=("G. Hinton",)), 1, ("author:Hinton",)),
        (
            topic(query='category:cs.LG "graph neural network"'),
            entry("Graph neural networks", categories=("cs.LG",)),
            4,
            ("category:cs.LG", '"graph neural network"'),
        ),
        # terms under NOT never count
        (topic(query="RL -survey"), entry("RL"), 3, ("RL",)),
        # a query's terms count only when the query matches
        (topic(("RL",), query="bandit AND regret"), entry("RL bandit"), 3, ("RL",)),
        (topic(("RL",), query="bandit AND regret"), entry("RL bandit regret"), 9, ("RL", "bandit", "regret")),
        # a keyword that the query repeats counts once
        (topic(("RL",), query="RL OR bandit"), entry("RL"), 3, ("RL",)),
        # ... yet each still finds what it finds: "buses" matches "buseses", "bus" does not
        (topic(("bus",), query="buses"), entry("Buses and buseses"), 3, ("bus",)),
        (topic(("bus",), query="buses"), entry("Buseses"), 3, ("buses",)),
    ],
)
def test_score_and_hits(t: match.CompiledTopic, e: Entry, score: int, hits: tuple[str, ...]) -> None:
    (found,) = match_topics({"t": t}, index_entries([e]))["t"]
    assert (found.score, found.hits) == (score, hits)


def test_ranking_is_score_then_newest_then_id() -> None:
    t = topic(("RL", "bandit"))
    found = selected(
        t,
        entry("x", "<p>RL</p>", id=1, age=0),  # 1
        entry("RL", id=2, age=5),  # 3
        entry("RL", "<p>bandit</p>", id=3, age=9),  # 4
        entry("RL", id=4, age=1),  # 3, newer than 2
        entry("RL", id=5, age=1),  # 3, same age as 4: higher id first
    )
    assert found == [3, 5, 4, 2, 1]


# --- why -----------------------------------------------------------------------------------------


def test_explain_agrees_with_matching() -> None:
    topics = {
        "kw": compile_topic("kw", TopicConfig(keywords=["RL", "bandit"], exclude=["trading"])),
        "q": compile_topic("q", TopicConfig(query='title:bandit OR (author:Hinton -"delayed feedback")')),
        "both": compile_topic("both", TopicConfig(keywords=["diffusion model"], query="RL regret")),
        "feeds": compile_topic("feeds", TopicConfig(keywords=["RL"], feeds=["lab-blog"])),
    }
    entries = [
        DOC,
        entry("RL for trading", id=2),
        entry("Bandits", authors=("Hinton",), id=3, feeds=("lab-blog",)),
        entry("Nothing here", id=4),
    ]
    found = match_topics(topics, index_entries(entries))
    compared = 0
    for e in entries:
        for name, t in topics.items():
            why = explain(t, index_entry(e))
            hit = [m for m in found[name] if m.entry.id == e.id]
            assert why.matched is bool(hit), (name, e.title)
            if hit:
                assert (why.score, why.hits) == (hit[0].score, hit[0].hits)
                compared += 1
    assert 0 < compared < len(entries) * len(topics)  # both outcomes occur; scores were compared


def test_explain_says_why() -> None:
    t = compile_topic(
        "rl",
        TopicConfig(
            keywords=["RL", "bandit"], query="regret -survey", exclude=["trading"], feeds=["arxiv-cs"]
        ),
    )
    why = explain(t, index_entry(DOC))
    assert why.matched and why.reason == "matches, score 8: RL, bandit, regret"
    assert [(c.text, c.found_in) for c in why.keywords] == [
        ("RL", ("summary",)),
        ("bandit", ("title", "summary")),
    ]
    assert [(c.text, c.found_in, c.negated) for c in why.query_terms] == [
        ("regret", ("title",), False),
        ("survey", (), True),
    ]
    assert why.query_matched is True and why.vetoed_by == ()
    vetoed = explain(t, index_entry(entry("RL trading")))
    assert not vetoed.matched and vetoed.reason == "vetoed by exclude trading"
    elsewhere = explain(t, index_entry(entry("RL", feeds=("lab-blog",))))
    assert not elsewhere.matched and elsewhere.reason == "not from its feeds (arxiv-cs)"
    missing = explain(t, index_entry(entry("nothing")))
    assert missing.reason == "no keyword found; the query is false"


# --- highlighting --------------------------------------------------------------------------------


def test_hit_spans_cover_exactly_the_matching_words() -> None:
    text = "Spiking Neural Networks (SNNs) beat URL-based RL"
    spans = hit_spans(text, ["spiking neural network", "SNN", "RL"])
    assert [text[a:b] for a, b in spans] == ["Spiking Neural Networks", "SNNs", "RL"]


def test_hit_spans_of_query_terms_follow_their_fields() -> None:
    text = "Diffusion models by Hinton, in cs.LG"
    hits = ["title:diffusion", '"diffusion model"', "author:Hinton", "category:cs.LG"]

    def marked(**kw: str) -> list[str]:
        return [text[a:b] for a, b in hit_spans(text, hits, **kw)]

    assert marked() == ["Diffusion models"]  # title and summary terms
    assert marked(field="title") == ["Diffusion models"]
    assert marked(field="summary") == ["Diffusion models"]  # the phrase; title:diffusion is not
    assert [text[a:b] for a, b in hit_spans(text, ["title:diffusion"], field="summary")] == []
    assert marked(field="author") == ["Hinton"]
    assert marked(field="category") == ["cs.LG"]
    assert hit_spans("Réseau de neurones", ["reseaus"]) == [(0, 6)]
    with pytest.raises(ValueError, match="unknown field"):
        hit_spans(text, hits, field="body")


# --- properties ----------------------------------------------------------------------------------

QUERY_PIECES = st.sampled_from(
    ["(", ")", '"', "-", " ", "AND", "OR", "NOT", "title:", "author:", "feed:", "titel:", ":", "RL", "é", "x"]
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.lists(QUERY_PIECES, max_size=30).map("".join)))
def test_the_query_parser_only_ever_raises_match_error(query: str) -> None:
    try:
        parse_query(query)
        compile_topic("t", TopicConfig(query=query))
    except MatchError as exc:
        # where, what, then the query's line and a caret under the character (none for a
        # blank query; no caret for a problem of the whole query, which alone has no position)
        error = exc.problems[0]
        assert re.fullmatch(r"(query|topics\.t\.query): [^\n]+(\n    [^\n]*(\n +\^)?)?", str(exc))
        assert error.position is not None or "contain none of its terms" in str(error)
        assert error.position is None or 1 <= error.position <= len(query) + 1
        lines = 1 if not query.strip() else 2 if error.position is None else 3
        assert len(str(error).split("\n")) == lines


# Words that are no one's plural and whose plurals meet no other word of the list.
VOCAB = [
    "network", "policy", "bandit", "snn", "mdp", "bus", "bias", "box", "match", "cache", "movie", "day",
    "gpu", "graph", "model", "agent", "reward", "kernel", "spike", "robot", "class", "process", "loss",
    "memory", "query", "key", "diffusion", "regret",
]  # fmt: skip


def test_the_vocabulary_words_are_distinct_under_the_plural_fold() -> None:
    for a in VOCAB:
        for b in VOCAB:
            if a != b:
                assert not (forms(a) | {plural(a)}) & (forms(b) | {plural(b)}), (a, b)


def texts(word: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    separators = st.sampled_from([" ", "-", ", ", " (", ") ", "/"])
    return st.lists(st.tuples(word, separators), max_size=12).map(lambda ws: "".join(w + s for w, s in ws))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(VOCAB), min_size=1, max_size=3).map(" ".join),
    texts(st.sampled_from(VOCAB)),
    st.data(),
)
def test_matching_is_invariant_under_case_and_the_plural_fold(
    keyword: str, text: str, data: st.DataObject
) -> None:
    plain = matches(topic((keyword,)), entry(text))
    recase = data.draw(st.sampled_from([str.upper, str.lower, str.title, str.swapcase]))
    pluralise = data.draw(st.lists(st.booleans(), min_size=30, max_size=30))

    def fold_some(s: str) -> str:
        found = re.split(r"(\W+)", s)
        return "".join(
            plural(w) or w if w.isalpha() and pluralise[i % 30] else w for i, w in enumerate(found)
        )

    assert matches(topic((recase(keyword),)), entry(recase(text))) is plain
    assert matches(topic((fold_some(keyword),)), entry(fold_some(text))) is plain
    assert matches(topic(query=f'"{recase(fold_some(keyword))}"'), entry(recase(fold_some(text)))) is plain


TERMS = st.one_of(
    st.sampled_from(VOCAB),
    st.lists(st.sampled_from(VOCAB), min_size=2, max_size=3).map(lambda ws: '"' + " ".join(ws) + '"'),
    st.tuples(
        st.sampled_from(["title:", "summary:", "author:", "category:", "feed:"]), st.sampled_from(VOCAB)
    ).map("".join),
)
ENTRIES = st.lists(
    st.builds(
        lambda title, summary, author, category, feed: (title, summary, author, category, feed),
        texts(st.sampled_from(VOCAB)),
        texts(st.sampled_from(VOCAB)),
        st.sampled_from(VOCAB),
        st.sampled_from(VOCAB),
        st.sampled_from(VOCAB),
    ),
    max_size=8,
).map(
    lambda rows: [
        entry(t, s, authors=(a,), categories=(c,), feeds=(f,), id=n) for n, (t, s, a, c, f) in enumerate(rows)
    ]
)


@settings(max_examples=200, deadline=None)
@given(TERMS, TERMS, ENTRIES)
def test_or_is_union_and_is_intersection(a: str, b: str, entries: list[Entry]) -> None:
    def ids(query: str) -> set[int]:
        return set(selected(topic(query=query), *entries))

    assert ids(f"{a} OR {b}") == ids(a) | ids(b)
    assert ids(f"{a} AND {b}") == ids(a) & ids(b) == ids(f"{a} {b}")
    assert ids(f"{a} -{b}") == ids(a) - ids(b)
