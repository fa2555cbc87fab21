"""Codebook Reconstruction and Alignment, Sec. 3.3: from VQ-Sign's character-level sign tokens to word-level ones.

Map: 1. repeat pre-processing (s0); 2. candidate words from BPE; 3. `sinkhorn`; 4. `transport` (Eq. 5) and Eq. 4
for one codebook size, and `search`, VOLT's [65] search over sizes; 5. segmentation (`longest_match`); the vocabulary
file; 6. `SignTokens`: s0, the word codebook S^w composed through g, the projection f and L_MMD (Eq. 6).
Ours, not the paper's: Eq. 5's word marginal is KL-relaxed (tau); the readout's keep_ratio; the size rule "muv"
(VOLT's marginal utility; "eq4" is the paper's); the MMD bandwidths.

Character ids 0..M-1 are VQ-Sign's codebook indices (s_1..s_M); s0 is id M. A vocabulary starts with these M + 1
single characters (word id c = character c), so every pre-processed sequence can be segmented.
"""
import heapq
import itertools
import math
import warnings
from collections import Counter, OrderedDict, defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from signllm_kernels.mmd import mmd


@dataclass
class CRAConfig:
    n_chars: int = 256          # M, VQ-Sign's codebook size (Sec. 4.1); s0 gets id M
    m: int = 32                 # size increment: the r-th codebook has r * m candidate words (Sec. 4.1)
    R: int = 16                 # sizes searched, r = 1..R (the paper does not give R: it bounds the search)
    max_candidates: int = 10000  # BPE merges kept as candidate words
    min_count: int = 2          # BPE stops at a pair rarer than this
    eps: float = 1.0            # entropic weight of Eq. 5 (VOLT calls POT with reg = 1.0)
    tau: float = 0.5            # KL weight on the word marginal (ours: the masses differ, see transport)
    cost: str = "paper"         # "paper": D = log P(s|w) as printed; "volt": D = -log P(s|w) (see transport)
    keep_ratio: float = 0.3     # readout: a word stays if the plan gives it this share of what it asks for (ours)
    size_rule: str = "muv"      # "muv": VOLT's marginal utility (ours); "eq4": the paper's largest drop of Eq. 4
    sinkhorn_iters: int = 5000
    sinkhorn_tol: float = 1e-9  # the paper's epsilon on the character marginal, max-abs


# ----------------------------------------------------------------------------------------------------------------------
# 1. pre-processing of repeated characters

def runs(seq):
    """[(token, run length)] of a sequence, e.g. [1, 1, 1, 2] -> [(1, 3), (2, 1)]."""
    return [(t, len(list(g))) for t, g in itertools.groupby(seq)]


def repeat_alpha(seq):
    """alpha: the mean length of the runs longer than 1, None if there are none (the paper leaves this open)."""
    lengths = [n for _, n in runs(seq) if n > 1]
    return sum(lengths) / len(lengths) if lengths else None


def preprocess(seq, n_chars):
    """Each run collapsed to its first token, followed by s0 = n_chars if longer than alpha: [s1, s1, s1] -> [s1, s0]
    when alpha < 3 (the paper's example)."""
    for pos, t in enumerate(seq):
        if not (isinstance(t, (int, np.integer)) and 0 <= t < n_chars):
            raise ValueError(f"token {t!r} at position {pos} is not a VQ index in [0, {n_chars})")
    alpha, out = repeat_alpha(seq), []
    for t, n in runs(seq):
        out.append(int(t))
        if alpha is not None and n > alpha:
            out.append(n_chars)  # s0, the "slowing down" sign
    return out


# ----------------------------------------------------------------------------------------------------------------------
# 2. candidate words: byte-pair-encoding merges (Gage 1994 [23]; Sennrich et al. 2016), the candidates VOLT [65] uses

def _merge_pair(w, pair, new):
    """w with the non-overlapping occurrences of `pair`, left to right, replaced by `new`."""
    a, b = pair
    out, i = [], 0
    while True:
        try:
            j = w.index(a, i)  # next candidate site (list.index runs in C)
        except ValueError:
            return out + w[i:]
        if j + 1 < len(w) and w[j + 1] == b:
            out += w[i:j] + [new]
            i = j + 2
        else:
            out += w[i:j + 1]
            i = j + 1


def bpe_candidates(seqs, max_candidates, min_count=2):
    """[(characters, count)] in merge order: each merge of the most frequent adjacent pair (the smaller on ties) makes
    a candidate, counted as often as it applied. Sign sequences have no spaces: merges may cross word boundaries.
    Pairs are recounted in the sequences a merge changes only; the heap holds an entry >= each pair's count."""
    words = [list(s) for s in seqs]                  # each sequence as a list of symbol ids, chars first
    spell = {c: (c,) for w in words for c in w}      # symbol id -> its characters
    pair_count, where = Counter(), defaultdict(set)  # pair -> occurrences; pair -> sequences holding it
    for k, w in enumerate(words):
        for p in zip(w, w[1:]):
            pair_count[p] += 1
            where[p].add(k)
    heap = [(-n, p) for p, n in pair_count.items()]
    heapq.heapify(heap)
    new, out = max(spell, default=-1) + 1, {}        # out: characters -> count, in merge order
    while heap and len(out) < max_candidates:
        n, pair = heapq.heappop(heap)
        if -n != pair_count[pair]:  # stale entry: the count fell since it was pushed; queue the current count
            if pair_count[pair] > 0:
                heapq.heappush(heap, (-pair_count[pair], pair))
            continue
        if -n < min_count:
            break
        applied = 0
        for k in where.pop(pair):  # the order does not matter: each sequence's change is its own
            w, merged = words[k], _merge_pair(words[k], pair, new)
            if len(merged) == len(w):
                continue  # stale index entry
            applied += len(w) - len(merged)
            delta = Counter(zip(merged, merged[1:]))
            delta.subtract(zip(w, w[1:]))  # the change of this sequence's pair counts
            for p, d in delta.items():
                pair_count[p] += d
                if d > 0:  # a count that rises needs a new heap entry; one that falls is fixed when popped
                    heapq.heappush(heap, (-pair_count[p], p))
                    where[p].add(k)
            words[k] = merged
        spell[new] = spell[pair[0]] + spell[pair[1]]
        out[spell[new]] = out.get(spell[new], 0) + applied  # two merge paths to one spelling: one candidate
        new += 1
    return list(out.items())


# ----------------------------------------------------------------------------------------------------------------------
# 5. (used by the search) segmentation: greedy longest match (WordPiece's rule) over a trie of the vocabulary

def build_trie(vocab):
    """Nested dicts, one level per character; node[None] = the id of the word ending there."""
    trie = {}
    for wid, word in enumerate(vocab):
        node = trie
        for c in word:
            node = node.setdefault(c, {})
        node[None] = wid
    return trie


def longest_match(seq, trie):
    """Word ids of a pre-processed character sequence: at each position the longest word of the trie that matches."""
    out, i = [], 0
    while i < len(seq):
        node, j, best, end = trie, i, None, i
        while j < len(seq) and seq[j] in node:
            node = node[seq[j]]
            j += 1
            if None in node:
                best, end = node[None], j
        if best is None:
            raise ValueError(f"character {seq[i]!r} at position {i} is not in the vocabulary")
        out.append(best)
        i = end
    return out


# ----------------------------------------------------------------------------------------------------------------------
# 3. Sinkhorn (Cuturi 2013 [16]) on the feasible pairs, in the log domain

def _lse(x, starts, seg):
    """log-sum-exp of x over each run x[starts[k]:starts[k+1]]; seg[p] = k, the run (row or column) of entry p."""
    mx = np.maximum.reduceat(x, starts)  # each run's largest term: exp() below cannot overflow
    return mx + np.log(np.add.reduceat(np.exp(x - mx[seg]), starts))


def sinkhorn(a, b, row, col, cost, eps, tau=math.inf, n_iters=1000, tol=1e-9, check_every=10):
    """min_P <P, C> + eps KL(P | a b^T) + tau KL(P^T 1 | b) s.t. P 1 = a, over the feasible pairs (row[p], col[p])
    with costs cost[p]: rows exact, columns KL-relaxed (tau = inf: both exact). With K = exp(-C / eps) a b^T and
    fi = tau / (tau + eps) the updates (Chizat et al. 2018) are
        u = a / (K v)           log u = log a - LSE_j(log K + log v)
        v = (b / (K^T u))^fi    log v = fi (log b - LSE_i(log K + log u))
    and P = diag(u) K diag(v): the iterates of POT's `ot.unbalanced.sinkhorn_unbalanced(a, b, C, eps, (inf, tau))`.
    An LSE runs over one row's or column's pairs: an iteration costs O(pairs). Every `check_every` iterations we
    stop once each row is within `tol` of a. Returns (P on the pairs, max-abs row error, iterations).
    """
    a, b, cost = (np.asarray(x, dtype=np.float64) for x in (a, b, cost))
    row, col = np.asarray(row, dtype=np.int64), np.asarray(col, dtype=np.int64)
    if not (a.ndim == b.ndim == cost.ndim == 1 and row.shape == col.shape == cost.shape and len(row)):
        raise ValueError(f"sinkhorn: a {a.shape}, b {b.shape}, row {row.shape}, col {col.shape}, cost {cost.shape}")
    if not ((a > 0).all() and (b > 0).all() and np.isfinite(cost).all() and eps > 0 and tau > 0 and n_iters > 0) or (
            tau == math.inf and abs(a.sum() - b.sum()) > 1e-9 * a.sum()):
        raise ValueError("sinkhorn: a, b, eps, tau, n_iters must be > 0, the costs finite (infeasible pairs left out), "
                         f"and sum(a) = sum(b) if balanced (tau = inf): {a.sum()} vs {b.sum()}")
    if (set(row.tolist()) != set(range(len(a))) or set(col.tolist()) != set(range(len(b)))
            or len(set(zip(row.tolist(), col.tolist()))) != len(row)):
        raise ValueError("sinkhorn: an index out of range, a row without pairs, a column without pairs or a pair twice")
    by_row, by_col = np.argsort(row, kind="stable"), np.argsort(col, kind="stable")  # the pairs grouped by row, column
    starts_r, starts_c = (np.r_[0, np.cumsum(np.bincount(idx))[:-1]] for idx in (row, col))  # where each group starts
    log_a, log_b = np.log(a), np.log(b)
    log_K = -cost / eps + log_a[row] + log_b[col]  # (pairs,) log K, K = exp(-C / eps) a b^T
    K_r, row_r, col_r = log_K[by_row], row[by_row], col[by_row]  # the pairs grouped by row
    K_c, row_c, col_c = log_K[by_col], row[by_col], col[by_col]  # ... and by column
    fi = 1.0 if tau == math.inf else tau / (tau + eps)
    log_u, log_v = np.zeros(len(a)), np.zeros(len(b))
    for it in range(1, n_iters + 1):
        log_u = log_a - _lse(K_r + log_v[col_r], starts_r, row_r)  # u = a / (K v)
        log_v = fi * (log_b - _lse(K_c + log_u[row_c], starts_c, col_c))  # v = (b / (K^T u))^fi
        if it % check_every == 0 or it == n_iters:
            P = np.exp(log_u[row] + log_K + log_v[col])  # P = diag(u) K diag(v), on the pairs
            err = np.abs(np.bincount(row, P, len(a)) - a).max()
            if err <= tol:
                break
    return P, err, it


# ----------------------------------------------------------------------------------------------------------------------
# 4. one codebook's transport problem (Eq. 5) and its entropy (Eq. 4); the search over sizes

def transport(vocab, counts, char_counts, cfg):
    """Eq. 5 for one codebook (vocab: word id -> characters, counts: word id -> count). Returns the word ids with a
    count, each one's plan mass / the mass P(w_j) it asks for, Eq. 4, characters per token and (err, iterations).
    P(s_i) is the character's share of the corpus, P(w_j) = count(w_j) len(w_j) / #characters (VOLT). Candidates
    overlap, so the words ask for more than the characters hold: rows exact, columns relaxed by tau KL (ours).
    cfg.cost "paper": D(j, i) = log P(s_i | w_j) as printed, so a word wins its characters from its own pieces;
    "volt": VOLT's D = -log P(s|w). Like VOLT, Sinkhorn minimises eps sum P log P, not Eq. 4's concave -sum P log P.
    """
    chars = sorted(c for c, n in char_counts.items() if n > 0)
    index, n_all = {c: i for i, c in enumerate(chars)}, sum(char_counts.values())
    used = [j for j, n in enumerate(counts) if n > 0]
    pairs = [(index[c], k, n / len(vocab[j])) for k, j in enumerate(used) for c, n in Counter(vocab[j]).items()]
    row, col, cond = (np.array(x) for x in zip(*pairs))  # (pairs,) each: character, word, P(s_i | w_j)
    length = np.array([len(vocab[j]) for j in used], dtype=np.float64)
    a = np.array([char_counts[c] for c in chars], dtype=np.float64) / n_all
    b = np.array([counts[j] for j in used]) * length / n_all
    cost = {"paper": np.log(cond), "volt": -np.log(cond)}[cfg.cost]  # D(j, i) on the feasible pairs
    P, err, iters = sinkhorn(a, b, row, col, cost, cfg.eps, cfg.tau, cfg.sinkhorn_iters, cfg.sinkhorn_tol)
    if err > cfg.sinkhorn_tol:
        warnings.warn(f"cra.transport: Sinkhorn stopped at row error {err:.1e} after {iters} iterations")
    mass = np.bincount(col, P, len(used))  # the plan's word marginal
    H = float(-(P * np.log(P)).sum() + (P * np.log(cond)).sum())  # Eq. 4: -sum P log P - sum P (-log P(s|w))
    return used, mass / b, H, float(mass.sum() / (mass / length).sum()), (float(err), iters)


@dataclass
class CRAResult:
    n_chars: int                                  # M; the slow token s0 is character M
    entropies: list                               # H_r, Eq. 4 on the r-th plan (= Eq. 3 on an even split), r = 0..R
    chosen_r: int
    vocab: list                                   # word id -> tuple of character ids; ids 0..M are the characters
    freqs: list                                   # word id -> count in the training corpus segmented with vocab
    m: int = 32
    rule: str = "eq4"
    ipc: list = field(default_factory=list)      # H_r / characters per token: entropy per character (VOLT)
    sizes: list = field(default_factory=list)    # words + characters that the r-th plan's readout keeps

    def scores(self):
        """{r: score}: "eq4", H_{r-1} - H_r; "muv", (ipc_{r-1} - ipc_r) / words added, where words are added."""
        if self.rule == "eq4":
            return {r: self.entropies[r - 1] - self.entropies[r] for r in range(1, len(self.entropies))}
        n = self.sizes
        return {r: (self.ipc[r - 1] - self.ipc[r]) / (n[r] - n[r - 1]) for r in range(1, len(n)) if n[r] > n[r - 1]}

    def describe(self):
        """The search as lines of text: each size's entropies, readout and score, then the choice and why."""
        lines, scores = [], self.scores()
        for r, (h, c, n) in enumerate(zip(self.entropies, self.ipc, self.sizes)):
            lines.append(f"codebook r={r}: {r * self.m} candidates -> {n - self.n_chars - 1} words kept; Eq. 4 "
                         f"{h:.4f}, per character {c:.4f}, {self.rule} score {scores.get(r, math.nan):+.5f}"
                         + ("  <- chosen" if r == self.chosen_r else ""))
        why = {"eq4": "Eq. 4's largest drop", "muv": "the largest drop of entropy per character per word added (ours)"}
        return lines + [f"chosen r={self.chosen_r}: {why[self.rule]}"]


def search(seqs, cfg):
    """The word-level codebook of pre-processed training sequences (ids in [0, M]). The r-th codebook (r = 0..R) is
    the M + 1 characters and the first r*m candidates in merge order (as VOLT). Rule "eq4" (the paper): the largest
    drop of Eq. 4. Eq. 4 rises with r on our tokens, so the default "muv" is VOLT's: the drop of entropy per character,
    per word added. The vocabulary is the chosen plan's readout: a candidate it gives keep_ratio of its mass stays."""
    M = cfg.n_chars
    if not any(seqs) or cfg.cost not in ("paper", "volt") or cfg.size_rule not in ("muv", "eq4"):
        raise ValueError(f"cra.search: an empty corpus, or cost {cfg.cost!r} / size_rule {cfg.size_rule!r} unknown")
    for k, s in enumerate(seqs):
        bad = [c for c in s if not (type(c) is int and 0 <= c <= M)]
        if bad:
            raise ValueError(f"sequence {k}: character {bad[0]!r} is not an int in [0, {M}] (run preprocess first)")
    cands = bpe_candidates(seqs, cfg.max_candidates, cfg.min_count)
    char_counts = Counter(c for s in seqs for c in s)
    singles = [(c,) for c in range(M + 1)]  # in every codebook, each asking for every occurrence of its character
    res, kept = CRAResult(M, [], 0, [], [], cfg.m, cfg.size_rule), []
    for r in range(min(cfg.R, math.ceil(len(cands) / cfg.m)) + 1):
        vocab = singles + [w for w, _ in cands[: r * cfg.m]]
        counts = [char_counts[c] for c in range(M + 1)] + [n for _, n in cands[: r * cfg.m]]
        used, share, H, length, _ = transport(vocab, counts, char_counts, cfg)
        kept.append([vocab[j] for j, s in zip(used, share) if j > M and s >= cfg.keep_ratio])  # the readout
        res.entropies.append(H)
        res.ipc.append(H / length)
        res.sizes.append(M + 1 + len(kept[-1]))
    scores = res.scores()
    res.chosen_r = max(scores, key=scores.get) if scores else 0  # the first size on ties
    res.vocab = singles + kept[res.chosen_r]
    trie = build_trie(res.vocab)
    freqs = Counter(t for s in seqs for t in longest_match(s, trie))
    res.freqs = [freqs[j] for j in range(len(res.vocab))]
    return res


# ----------------------------------------------------------------------------------------------------------------------
# the vocabulary file: "count<TAB>character ids" per word, after a header with the search (per r: Eq. 4, entropy per
# character, words + characters kept), the rule and the choice

def save_vocab(path, res):
    with open(path, "w") as f:
        f.write(f"# SignLLM CRA word vocabulary (Sec. 3.3): count<TAB>character ids; s0 = {res.n_chars}\n")
        f.write(f"# n_chars {res.n_chars}\n# m {res.m}\n# rule {res.rule}\n# chosen_r {res.chosen_r}\n")
        for r, (h, c, n) in enumerate(zip(res.entropies, res.ipc, res.sizes)):
            f.write(f"# entropy {r} {h!r} {c!r} {n}\n")
        for w, n in zip(res.vocab, res.freqs):
            f.write(f"{n}\t{' '.join(map(str, w))}\n")


def load_vocab(path):
    head, curve, vocab, freqs = {"m": 32, "rule": "eq4"}, [], [], []
    with open(path) as f:
        for ln, line in enumerate(f, 1):
            key = line.split()[:3]
            try:
                if key[:2] in (["#", "n_chars"], ["#", "chosen_r"], ["#", "m"], ["#", "rule"]):
                    head[key[1]] = key[2] if key[1] == "rule" else int(key[2])
                elif key[:2] == ["#", "entropy"]:  # r, Eq. 4, per character, vocabulary size (older files: r, Eq. 4)
                    r, h, c, n = (line.split()[2:] + ["nan", "0"])[:4]
                    curve.append((int(r), float(h), float(c), int(n)))
                elif not line.startswith("#"):
                    n, chars = line.rstrip("\n").split("\t")
                    vocab.append(tuple(int(c) for c in chars.split()))
                    freqs.append(int(n))
            except (ValueError, IndexError) as e:
                raise ValueError(f"{path}:{ln}: malformed line {line!r} ({e})") from None
    if "n_chars" not in head or "chosen_r" not in head or [c[0] for c in curve] != list(range(len(curve))):
        raise ValueError(f"{path}: missing '# n_chars' or '# chosen_r', or '# entropy' lines not r = 0, 1, ...")
    M = head["n_chars"]
    if vocab[: M + 1] != [(c,) for c in range(M + 1)]:
        raise ValueError(f"{path}: the first {M + 1} entries must be the single characters 0..{M} in order")
    for k, w in enumerate(vocab):
        if not w or not all(0 <= c <= M for c in w):
            raise ValueError(f"{path}: word {k} {w} is empty or has a character outside [0, {M}]")
    if len(set(vocab)) != len(vocab):
        raise ValueError(f"{path}: duplicate words")
    _, H, ipc, n = map(list, zip(*curve)) if curve else ([], [], [], [])
    return CRAResult(M, H, head["chosen_r"], vocab, freqs, head["m"], head["rule"], ipc, n)


# ----------------------------------------------------------------------------------------------------------------------
# 6. word-level sign tokens through g, the projection f, and the sign-text alignment (Eq. 6)

def median_sigmas(q, scales=(0.5, 1.0, 2.0)):
    """RBF bandwidths for Eq. 6 (ours: the paper gives none): the text embeddings' median pairwise distance, scaled."""
    q = q.detach().double()
    dist = torch.cdist(q, q)[torch.triu_indices(len(q), len(q), 1).unbind()]  # (n(n-1)/2,) pairwise distances
    return [float(dist.median()) * s for s in scales]


def compose(g, x, n):
    """g over the first n[k] vectors of each x[k] (K, L, d) -> (K, d): g's context after the last of them."""
    c = g(x, torch.arange(x.shape[1], device=x.device) < n[:, None])  # (K, L, d)
    return c[torch.arange(len(c), device=x.device), n - 1]  # (K, d)


class SignTokens(nn.Module):
    """The learned side of CRA: s0, the word codebook S^w composed through g, f, and L_MMD; the vocabulary is fixed."""

    def __init__(self, vocab, freqs, n_chars, d, d_llm, hidden, text_ids=(), sigmas=()):
        super().__init__()
        if [tuple(w) for w in vocab[: n_chars + 1]] != [(c,) for c in range(n_chars + 1)]:
            raise ValueError(f"vocabulary must start with the {n_chars + 1} single characters (ids 0..{n_chars})")
        self.n_chars, self.vocab, self.trie = n_chars, [tuple(w) for w in vocab], build_trie(vocab)
        L = max(len(w) for w in vocab)
        self.register_buffer("word_chars", torch.tensor([list(w) + [0] * (L - len(w)) for w in vocab]))  # (n_words, L)
        self.register_buffer("word_len", torch.tensor([len(w) for w in vocab]))
        self.register_buffer("used", torch.tensor([n > 0 for n in freqs]))  # tokens seen in training: MMD's sample
        self.register_buffer("text_ids", torch.tensor(list(text_ids), dtype=torch.long))  # text tokens of Eq. 6
        self.register_buffer("sigmas", torch.tensor(list(sigmas), dtype=torch.float64))
        self.s0 = nn.Parameter(torch.randn(d) * 0.1)  # the slow token's own embedding
        # f: two fully connected layers with a ReLU (Sec. 4.1), from the codebook space (d) to the LLM's width
        self.f = nn.Sequential(OrderedDict(fc1=nn.Linear(d, hidden), relu=nn.ReLU(), fc2=nn.Linear(hidden, d_llm)))

    def sentence(self, chars):
        """A video's character tokens -> its word ids: repeat pre-processing (s0), then longest-match segmentation."""
        return longest_match(preprocess(chars, self.n_chars), self.trie)

    def char_table(self, codebook):
        return torch.cat([codebook, self.s0[None].to(codebook.dtype)])  # (M + 1, d): s_1..s_M and s0

    def word_table(self, codebook, g):
        """S^w (n_words, d): each word's character embeddings run through g ("composing all features of the
        character-level tokens ... via our autoregressive model g"); a word is g's context after its last character."""
        return compose(g, self.char_table(codebook)[self.word_chars], self.word_len)  # (n_words, L, d) -> (n_words, d)

    def text_tokens(self, text_embeddings):
        """q of Eq. 6: the frozen LLM's embeddings of the training translations' tokens (n_t, d_llm), no gradient."""
        if self.text_ids.numel() == 0 or self.sigmas.numel() == 0:
            raise ValueError("SignTokens has no text_ids / sigmas: they are set by the cra stage")
        return text_embeddings[self.text_ids].float()

    def mmd_loss(self, codebook, g, text_embeddings, S_w=None):
        """Eq. 6 at both levels, MMD(f(characters), text) + MMD(f(words), text), over the tokens seen in training."""
        q, sig = self.text_tokens(text_embeddings), self.sigmas.tolist()
        S_w = self.word_table(codebook, g) if S_w is None else S_w  # a caller that has S_w passes it
        with torch.autocast(q.device.type, enabled=False):  # f and Eq. 6 in fp32 under train.py's bf16 autocast
            chars = self.f(self.char_table(codebook)[self.used[: self.n_chars + 1]].float())  # (n_c, d_llm)
            words = self.f(S_w[self.used].float())  # (n_w, d_llm)
            return mmd(chars, q, sig) + mmd(words, q, sig)
