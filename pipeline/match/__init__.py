"""Which entries belong to which topic: pure functions, no I/O. The rules, as README "Topics" states them:

- An entry's searchable text: title; summary (HTML stripped, entities decoded); authors;
  categories; the feeds that carried it.
- **Words.** Text is split into words of letters and digits; everything else (spaces, hyphens,
  slashes, punctuation) separates words. Matching is case-insensitive and accent-insensitive.
  Plurals fold: a word matches its simple English plural and back (`network`~`networks`,
  `SNN`~`SNNs`, `MDP`~`MDPs`, `policy`~`policies`, `bandit`~`bandits`); no other stemming.
- **A keyword** is one or more words; it matches when its words appear consecutively in the
  title or the summary. So `RL` matches "RL" and "(RL)" but not "URL" nor "TempoRL";
  `score-based` matches "score-based" and "score based"; `diffusion model` matches "Diffusion
  Models" and also "solution-diffusion model" (that is what the rule says).
- **`keywords`**: the topic matches when any keyword matches.
- **`query`**: a boolean expression of terms and "quoted phrases" (each with the keyword rule),
  `AND`, `OR`, `NOT` (upper case), parentheses, a leading `-` for NOT, juxtaposition meaning
  AND, and field prefixes `title:`, `summary:`, `author:`, `category:`, `feed:` (a term without
  a prefix searches title and summary). Errors are reported by `digest check` with the topic
  and the character position.
- A topic with both matches when any keyword OR the query matches. **`exclude`** keywords veto
  it. **`feeds`** restricts it to entries carried by those feeds.
- **Ranking** within a topic: a score (a title hit weighs 3, a summary hit 1, summed over
  distinct keywords/terms), then newest first. `max_entries` keeps the best.
"""

from __future__ import annotations

from .highlight import hit_spans, hit_term, merge_spans
from .index import (
    AUTHOR,
    CATEGORY,
    FEED,
    FIELDS,
    SUMMARY,
    TITLE,
    UNPREFIXED,
    Document,
    Field,
    Phrase,
    fold,
    forms,
    index_entries,
    index_entry,
    plural,
    same_word,
    summary_text,
    word_spans,
    words,
)
from .query import (
    MAX_NESTING,
    And,
    Leaf,
    Node,
    Not,
    Or,
    Term,
    evaluate,
    keyword_term,
    parse_query,
    query_terms,
)
from .topics import (
    WEIGHTS,
    CompiledTopic,
    Explanation,
    TermCheck,
    compile_topic,
    compile_topics,
    explain,
    match_topic,
    match_topics,
)

__all__ = [
    "AUTHOR",
    "CATEGORY",
    "FEED",
    "FIELDS",
    "MAX_NESTING",
    "SUMMARY",
    "TITLE",
    "UNPREFIXED",
    "WEIGHTS",
    "And",
    "CompiledTopic",
    "Document",
    "Explanation",
    "Field",
    "Leaf",
    "Node",
    "Not",
    "Or",
    "Phrase",
    "Term",
    "TermCheck",
    "compile_topic",
    "compile_topics",
    "evaluate",
    "explain",
    "fold",
    "forms",
    "hit_spans",
    "hit_term",
    "index_entries",
    "index_entry",
    "keyword_term",
    "match_topic",
    "match_topics",
    "merge_spans",
    "parse_query",
    "plural",
    "query_terms",
    "same_word",
    "summary_text",
    "word_spans",
    "words",
]
