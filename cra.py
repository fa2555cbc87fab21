"""Codebook Reconstruction of Sec. 3.3 ("Codebook Reconstruction Algorithm"): from VQ-Sign's character-level sign
tokens to a word-level codebook, chosen by optimal transport.

The steps, in the order of the paper:
1. `preprocess`: "Pre-processing of Repeated Characters". Each run of a repeated token keeps its first token; a run
   longer than alpha (the sequence's average run length) is followed by the slow token s0.
2. `bpe_candidates`: candidate words, the frequent multi-character sequences found by byte-pair-encoding merges (the
   paper leaves candidates open; VOLT [65], whose search this is, takes them from BPE).
3. `sinkhorn`: the entropic optimal transport solver the paper uses for Eq. 5, as a plain log-domain loop.
4. `search`: for r = 1..R the r-th codebook holds r*m candidate words (m = 32, Sec. 4.1); its entropy comes from
   the transport plan by Eq. 4 (which equals Eq. 3 when a word's characters are distinct); the chosen size is the
   one with the largest entropy drop H_{r-1} - H_r, H_0 being the character-level codebook's; its vocabulary is
   read out of that size's plan.
5. `segment`: a pre-processed character sequence -> word ids (greedy longest match).

Character ids: 0..M-1 are VQ-Sign's codebook indices (the paper's s_1..s_M); the slow token s0 is the extra id M,
one past the VQ codebook, so the character alphabet has M + 1 entries. The word vocabulary always starts with these
M + 1 single characters (word id c = character c), so every pre-processed sequence can be segmented.
"""
import heapq
import math
import numbers
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from kernels.mmd import mmd


@dataclass
class CRAConfig:
    n_chars: int = 256          # M, VQ-Sign's codebook size (Sec. 4.1); s0 gets id M
    m: int = 32                 # size increment: the r-th codebook has r * m candidate words (Sec. 4.1)
    R: int = 16                 # sizes searched, r = 1..R (the paper does not give R: our guess)
    max_candidates: int = 10000  # BPE merges kept as candidate words
    min_count: int = 2          # BPE stops at a pair rarer than this; the readout drops words rarer than this
    eps: float = 1.0            # entropic weight of Eq. 5 (VOLT calls POT with reg = 1.0)
    sinkhorn_iters: int = 2000
    sinkhorn_tol: float = 1e-6  # the paper's epsilon on the marginals, max-abs (VOLT keeps POT's stopping rule)
    check_every: int = 10       # Sinkhorn iterations between two marginal checks
    keep_ratio: float = 0.5     # readout: a word stays if its plan mass covers this share of its BPE count


# ----------------------------------------------------------------------------------------------------------------------
# 1. pre-processing of repeated characters


def runs(seq):
    """[(token, run length)] of a sequence, e.g. [1, 1, 1, 2] -> [(1, 3), (2, 1)]."""
    out = []
    for t in seq:
        if out and out[-1][0] == t:
            out[-1][1] += 1
        else:
            out.append([t, 1])
    return [tuple(r) for r in out]


def repeat_alpha(seq):
    """alpha of a sequence: the average length of its runs of repeated tokens.

    "we find all the repeated tokens ... and compute the average number of repeated tokens (alpha)": we average over
    the runs that do repeat (length > 1) only; counting single tokens as runs of 1 would pull alpha below 2 and mark
    every doubled token as slow. None when nothing repeats.
    """
    lengths = [n for _, n in runs(seq) if n > 1]
    return sum(lengths) / len(lengths) if lengths else None


def preprocess(seq, n_chars):
    """Collapse each run to its first token; a run longer than alpha is followed by s0 = n_chars.

    [s1, s1, s1] -> [s1, s0] when alpha < 3 (the paper's example); a run of exactly alpha tokens gets no s0.
    """
    for pos, t in enumerate(seq):
        if not (isinstance(t, numbers.Integral) and 0 <= t < n_chars):
            raise ValueError(f"token {t!r} at position {pos} is not a VQ index in [0, {n_chars})")
    alpha = repeat_alpha(seq)
    out = []
    for t, n in runs(seq):
        out.append(int(t))
        if alpha is not None and n > alpha:
            out.append(n_chars)  # s0, the "slowing down" sign
    return out


# ----------------------------------------------------------------------------------------------------------------------
# 2. candidate words: byte-pair-encoding merges (Gage 1994 [23]; Sennrich et al. 2016), the candidates VOLT [65] uses


def _merge_pair(w, pair, new):
    """Replace non-overlapping occurrences of `pair`, left to right, by the symbol `new`.

    Also returns how the sequence's adjacent-pair counts change, from the merge sites only: at a merge of w[i], w[i+1]
    the pairs (w[i-1], w[i]), (w[i], w[i+1]), (w[i+1], w[i+2]) go and (left, new), (new, right) come; when two
    merges touch ("a b a b" -> "ab ab") their shared pair is counted once.
    """
    a, b = pair
    out, delta, i, n = [], Counter(), 0, len(w)
    while True:
        try:
            j = w.index(a, i)  # next candidate site (list.index runs in C)
        except ValueError:
            break
        if j + 1 == n or w[j + 1] != b:
            out += w[i:j + 1]
            i = j + 1
            continue
        out += w[i:j]
        delta[pair] -= 1
        if out:  # left neighbour: the old pair is gone unless a merge right before already removed it
            if not (i == j and out[-1] == new):
                delta[(w[j - 1], a)] -= 1
            delta[(out[-1], new)] += 1
        if j + 2 < n:  # right neighbour: the new pair is added here unless the next merge adds it as its left
            delta[(b, w[j + 2])] -= 1
            if not (j + 3 < n and w[j + 2] == a and w[j + 3] == b):
                delta[(new, w[j + 2])] += 1
        out.append(new)
        i = j + 2
    return out + w[i:], delta


def bpe_candidates(seqs, max_candidates, min_count=2):
    """[(characters, count)] in merge order: each merge of the most frequent adjacent pair of symbols makes one
    candidate word; count is how many times the merge was applied to the corpus. Sign sequences have no spaces, so
    merges may cross what a human would call word boundaries: the search decides which candidates to keep.

    Pair counts are updated incrementally (only around the merge sites, see `_merge_pair`). The heap holds, for
    every pair, an entry at least as large as its count: a popped entry that is too large is re-queued with the
    current count. Ties go to the smaller pair of symbol ids, so the result is deterministic.
    """
    words = [list(s) for s in seqs]                  # each sequence as a list of symbol ids, chars first
    spell = {c: (c,) for w in words for c in w}      # symbol id -> its characters
    pair_count, where = Counter(), defaultdict(set)  # pair -> occurrences; pair -> sequences holding it
    for k, w in enumerate(words):
        for p in zip(w, w[1:]):
            pair_count[p] += 1
            where[p].add(k)
    heap = [(-n, p) for p, n in pair_count.items()]
    heapq.heapify(heap)
    new = max(spell, default=-1) + 1
    out, index = [], {}                              # [characters, count]; characters -> position in out
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
            w = words[k]
            merged, delta = _merge_pair(w, pair, new)
            if len(merged) == len(w):
                continue  # stale index entry
            applied += len(w) - len(merged)
            for p, d in delta.items():
                pair_count[p] += d
                if d > 0:  # a count that rises needs a new heap entry; one that falls is fixed when popped
                    heapq.heappush(heap, (-pair_count[p], p))
                    where[p].add(k)
            words[k] = merged
        spell[new] = spell[pair[0]] + spell[pair[1]]
        if spell[new] in index:  # two merge paths to one spelling ('ab'+'c', 'a'+'bc'): one candidate
            out[index[spell[new]]][1] += applied
        else:
            index[spell[new]] = len(out)
            out.append([spell[new], applied])
        new += 1
    return [tuple(c) for c in out]


# ----------------------------------------------------------------------------------------------------------------------
# 5. (used by the search) segmentation: greedy longest match over a trie of the vocabulary

_END = -1  # trie key holding the word id that ends at a node (character ids are >= 0)


def build_trie(vocab):
    """Nested dicts, one level per character; node[_END] = word id of the word ending there."""
    trie = {}
    for wid, word in enumerate(vocab):
        node = trie
        for c in word:
            node = node.setdefault(c, {})
        node[_END] = wid
    return trie


def _longest_match(seq, trie):
    out, i = [], 0
    while i < len(seq):
        node, j, best, end = trie, i, None, i
        while j < len(seq) and seq[j] in node:
            node = node[seq[j]]
            j += 1
            if _END in node:
                best, end = node[_END], j
        if best is None:
            raise ValueError(f"character {seq[i]!r} at position {i} is not in the vocabulary")
        out.append(best)
        i = end
    return out


def segment(seq, vocab):
    """Word ids of a pre-processed character sequence: at each position take the longest vocabulary word that
    matches (WordPiece's greedy rule), then continue after it. Deterministic; any vocabulary that holds every single
    character segments any sequence."""
    return _longest_match(seq, build_trie(vocab))


def segment_all(seqs, vocab):
    trie = build_trie(vocab)
    return [_longest_match(s, trie) for s in seqs]


# ----------------------------------------------------------------------------------------------------------------------
# 3. Sinkhorn (Cuturi 2013 [16]) in the log domain


def sinkhorn(a, b, cost, eps, n_iters=1000, tol=1e-9, check_every=10):
    """P = argmin_P <P, C> + eps * sum_ij P_ij log P_ij  s.t.  P 1 = a, P^T 1 = b  (balanced: sum a = sum b).

    This is POT's `ot.sinkhorn(a, b, C, reg=eps)` (POT's entropic term is also sum P log P), with POT's update
    order (v, then u), so after the same number of iterations the plans agree. Working with the logarithms of the
    scalings u, v keeps exp(-C / eps) from underflowing at small eps; an infeasible pair has C = +inf, so
    log K = -inf and P = 0 there. Every `check_every` iterations we stop once the column marginal (the rows are
    exact right after the u update) is within `tol` of b, entry by entry (POT uses the 2-norm).
    Returns (P, err, iters): err is the max-abs marginal error at exit.
    """
    if a.ndim != 1 or b.ndim != 1 or cost.shape != (a.shape[0], b.shape[0]):
        raise ValueError(f"sinkhorn: a {tuple(a.shape)}, b {tuple(b.shape)} and cost {tuple(cost.shape)} disagree")
    if n_iters < 1:
        raise ValueError(f"sinkhorn: n_iters must be >= 1, got {n_iters}")
    if not (a > 0).all() or not (b > 0).all():
        raise ValueError("sinkhorn: the marginals a and b must be strictly positive (drop empty rows/columns first)")
    if abs(a.sum().item() - b.sum().item()) > 1e-9 * a.sum().item():
        raise ValueError(f"sinkhorn: unbalanced problem, sum(a) = {a.sum().item()} != sum(b) = {b.sum().item()}")
    if torch.isnan(cost).any() or (cost == -math.inf).any():
        raise ValueError("sinkhorn: cost holds NaN or -inf")
    log_K = -cost / eps                                  # (n, k), -inf on infeasible pairs
    feasible = torch.isfinite(log_K)
    for dim, name in ((1, "row"), (0, "column")):
        empty = (~feasible.any(dim)).nonzero()
        if len(empty):
            raise ValueError(f"sinkhorn: cost {name} {empty[0].item()} has no finite entry, its mass cannot move")
    log_a, log_b = a.log(), b.log()
    log_u, log_v = torch.zeros_like(a), torch.zeros_like(b)
    for it in range(1, n_iters + 1):
        log_v = log_b - torch.logsumexp(log_K + log_u[:, None], dim=0)  # v = b / (K^T u)
        log_u = log_a - torch.logsumexp(log_K + log_v[None, :], dim=1)  # u = a / (K v)
        if it % check_every == 0 or it == n_iters:
            P = torch.exp(log_u[:, None] + log_K + log_v[None, :])  # P = diag(u) K diag(v), (n, k)
            err = (P.sum(0) - b).abs().max().item()
            if err <= tol:
                break
    return P, err, it


# ----------------------------------------------------------------------------------------------------------------------
# 4. the search (Eq. 3-5)


def entropy(p):
    """Eq. 3: H = -sum_j P(w_j) log P(w_j), in nats, of a vector of relative frequencies (zeros contribute 0)."""
    p = p[p > 0]
    return -(p * p.log()).sum().item()


def entropy_from_plan(P, cond):
    """Eq. 4: H = -sum P(w, s) log P(w, s) - sum P(w, s) (-log P(s | w)) over the feasible pairs (P > 0)."""
    nz = P > 0
    return (-(P[nz] * P[nz].log()).sum() - (P[nz] * -cond[nz].log()).sum()).item()


def codebook_transport(vocab, counts, cfg):
    """The OT problem of Eq. 5 for one codebook. Returns (used, P, cond, err, iters): `used` are the vocabulary ids of
    P's rows, P (words, chars) is the paper's P(j, i), cond (words, chars) is P(s_i | w_j).

    Word marginal: P(w_j), the relative frequency of w_j as a token when the corpus is segmented with this codebook
    (Eq. 3's definition). Cost D(j, i) = -log P(s_i | w_j) with P(s_i | w_j) = 1 / len(w_j) when w_j contains s_i,
    +inf otherwise. Character marginal: P(s_i) = sum_j P(w_j) (#s_i in w_j) / len(w_j), the character marginal of
    the same joint that Eq. 4 decomposes; with it the plan splits each word's mass evenly over its characters and
    Eq. 4 equals Eq. 3 whenever a word's characters are distinct (tests/test_cra.py shows both sides of this).
    Eq. 5 as printed, H(P) + <P, D> with D = log P(s|w) = "inf" when infeasible, mixes signs: we follow VOLT's
    min <P, D> - H(P) with D = -log P(s|w), i.e. POT's <P, D> + eps * sum P log P at eps = cfg.eps.
    Honest note: this cost is the same (log len(w_j)) on every feasible pair of a word, so with both marginals fixed
    the plan is that even split at any eps; the OT supplies the joint P(w, s) of Eq. 4, the words' frequencies
    decide the rest. Words with count 0 carry no mass and are left out (their row would be all zero).
    """
    used = [j for j, n in enumerate(counts) if n > 0]
    n_chars = cfg.n_chars + 1
    mult = torch.zeros(len(used), n_chars, dtype=torch.float64)  # (words, chars): #s_i in w_j
    for row, j in enumerate(used):
        for c in vocab[j]:
            mult[row, c] += 1
    length = mult.sum(1, keepdim=True)                           # (words, 1)
    p_w = torch.tensor([counts[j] for j in used], dtype=torch.float64)
    p_w = p_w / p_w.sum()
    p_s = p_w @ (mult / length)                                  # (words,) @ (words, chars) -> (chars,)
    chars = (p_s > 0).nonzero().squeeze(1)                       # characters that occur at all
    cond = torch.where(mult > 0, 1.0 / length, 0.0)[:, chars]    # P(s_i | w_j) as the paper estimates it
    cost = torch.where(cond > 0, -cond.log(), math.inf)          # D(j, i) = -log P(s_i | w_j), +inf if infeasible
    P, err, iters = sinkhorn(p_w, p_s[chars], cost, cfg.eps, cfg.sinkhorn_iters, cfg.sinkhorn_tol, cfg.check_every)
    return used, P, cond, err, iters


@dataclass
class CRAResult:
    n_chars: int                                   # M; the slow token s0 is character M
    entropies: list                                # H_r (Eq. 4, nats) of the r-th codebook, r = 0..R
    chosen_r: int                                  # argmax_r H_{r-1} - H_r
    vocab: list                                    # word id -> tuple of character ids; ids 0..M are the characters
    freqs: list                                    # word id -> count in the training corpus segmented with vocab
    sinkhorn: list = field(default_factory=list)  # (err, iters) of each size's Sinkhorn run


def search(seqs, cfg):
    """Choose the word-level codebook from pre-processed training sequences (lists of ids in [0, M]).

    Eq. 3 is an entropy per token, not per character (VOLT divides by the average token length): as words replace
    characters it need not fall, and the largest drop can be small and noisy; we keep the paper's definition.
    """
    M = cfg.n_chars
    if not any(seqs):
        raise ValueError("cra.search: the corpus holds no characters")
    for k, s in enumerate(seqs):
        bad = [c for c in s if not (type(c) is int and 0 <= c <= M)]
        if bad:
            raise ValueError(f"sequence {k}: character {bad[0]!r} is not an int in [0, {M}] (run preprocess first)")
    cands = bpe_candidates(seqs, cfg.max_candidates, cfg.min_count)
    singles = [(c,) for c in range(M + 1)]  # kept at every size so any sequence stays segmentable
    # H_0 is the character-level codebook (no words); sizes past the last candidate would repeat the last codebook
    R = min(cfg.R, math.ceil(len(cands) / cfg.m))
    entropies, stats, masses = [], [], []
    for r in range(R + 1):
        # candidates ranked in BPE merge order: VOLT's code takes the first S[t] merges of its BPE file (its paper
        # says "most frequent"; merge order is nearly frequency order and never puts a word before its parts)
        vocab = singles + [w for w, _ in cands[: r * cfg.m]]
        counts = Counter(t for s in segment_all(seqs, vocab) for t in s)
        counts = [counts[j] for j in range(len(vocab))]
        used, P, cond, err, iters = codebook_transport(vocab, counts, cfg)
        if err > cfg.sinkhorn_tol:
            warnings.warn(f"cra.search: Sinkhorn for size r={r} stopped at marginal error {err:.2e} > "
                          f"sinkhorn_tol={cfg.sinkhorn_tol:g} after {iters} iterations")
        entropies.append(entropy_from_plan(P, cond))  # Eq. 4 (= Eq. 3 for words of distinct characters)
        stats.append((err, iters))
        masses.append((used, P.sum(1), sum(counts)))  # the plan's word marginal and the number of tokens
    drops = [entropies[r - 1] - entropies[r] for r in range(1, R + 1)]
    chosen = 1 + max(range(R), key=lambda r: drops[r]) if R else 0  # first size on ties
    # Readout (VOLT's rule: drop the tokens the plan gives too little mass relative to their frequency; VOLT uses a
    # tiny threshold, we use keep_ratio): word j stays if plan mass * #tokens >= keep_ratio * its BPE merge count.
    # Prefixes that longer words absorbed get little mass and go; the single characters always stay.
    used, mass, n_tokens = masses[chosen]
    keep = []
    for j, p in zip(used, mass.tolist()):
        if j > M and p * n_tokens >= max(cfg.keep_ratio * cands[j - M - 1][1], cfg.min_count):
            keep.append(cands[j - M - 1][0])
    vocab = singles + keep
    freqs = Counter(t for s in segment_all(seqs, vocab) for t in s)
    return CRAResult(M, entropies, chosen, vocab, [freqs[j] for j in range(len(vocab))], stats)


# ----------------------------------------------------------------------------------------------------------------------
# the vocabulary file: one word per line, "count<TAB>character ids", so it reads without this code


def save_vocab(path, res):
    with open(path, "w") as f:
        f.write(f"# SignLLM CRA word vocabulary (Sec. 3.3): count<TAB>character ids; s0 = {res.n_chars}\n")
        f.write(f"# n_chars {res.n_chars}\n# chosen_r {res.chosen_r}\n")
        f.write("".join(f"# entropy {r} {h!r}\n" for r, h in enumerate(res.entropies)))
        f.write("".join(f"{n}\t{' '.join(map(str, w))}\n" for w, n in zip(res.vocab, res.freqs)))


def load_vocab(path):
    head, vocab, freqs = {"entropy": []}, [], []
    with open(path) as f:
        for ln, line in enumerate(f, 1):
            try:
                if line.startswith("# n_chars ") or line.startswith("# chosen_r "):
                    head[line.split()[1]] = int(line.split()[2])
                elif line.startswith("# entropy "):
                    head["entropy"].append(float(line.split()[3]))
                elif not line.startswith("#"):
                    n, chars = line.rstrip("\n").split("\t")
                    vocab.append(tuple(int(c) for c in chars.split()))
                    freqs.append(int(n))
            except (ValueError, IndexError) as e:
                raise ValueError(f"{path}:{ln}: malformed line {line!r} ({e})") from None
    if "n_chars" not in head or "chosen_r" not in head:
        raise ValueError(f"{path}: missing '# n_chars' or '# chosen_r' header")
    M = head["n_chars"]
    if vocab[: M + 1] != [(c,) for c in range(M + 1)]:
        raise ValueError(f"{path}: the first {M + 1} entries must be the single characters 0..{M} in order")
    for k, w in enumerate(vocab):
        if not w or not all(0 <= c <= M for c in w):
            raise ValueError(f"{path}: word {k} {w} is empty or has a character outside [0, {M}]")
    if len(set(vocab)) != len(vocab):
        raise ValueError(f"{path}: duplicate words")
    return CRAResult(M, head["entropy"], head["chosen_r"], vocab, freqs)


# ----------------------------------------------------------------------------------------------------------------------
# 6. word-level sign tokens through g, the projection f, and the sign-text alignment (Eq. 6)


class Projection(nn.Module):
    """f: two fully connected layers with a ReLU (Sec. 4.1), from the codebook space (d) to the LLM's width."""

    def __init__(self, d, hidden, d_llm):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, hidden), nn.Linear(hidden, d_llm)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


def median_sigmas(q, scales=(0.5, 1.0, 2.0)):
    """RBF bandwidths for Eq. 6 by the median heuristic (Gretton et al. 2012): the median pairwise distance of the
    text embeddings, times a few scales. The paper names "the radial kernel" without a bandwidth: our choice."""
    q = q.detach().double()
    dist = torch.cdist(q, q)[torch.triu_indices(len(q), len(q), 1).unbind()]  # (n(n-1)/2,) pairwise distances
    return [float(dist.median()) * s for s in scales]


class SignTokens(nn.Module):
    """The learned side of CRA: the slow token s0, the word codebook S^w composed through g, the projection f, and
    L_MMD. The vocabulary (word id -> character ids, from `search`) is fixed; word ids 0..M are single characters."""

    def __init__(self, vocab, freqs, n_chars, d, d_llm, hidden, text_ids=(), sigmas=()):
        super().__init__()
        if [tuple(w) for w in vocab[: n_chars + 1]] != [(c,) for c in range(n_chars + 1)]:
            raise ValueError(f"vocabulary must start with the {n_chars + 1} single characters (ids 0..{n_chars})")
        self.n_chars, self.vocab, self.trie = n_chars, [tuple(w) for w in vocab], build_trie(vocab)
        L = max(len(w) for w in vocab)
        word_chars = torch.tensor([list(w) + [0] * (L - len(w)) for w in vocab])  # (n_words, L), 0-padded
        self.register_buffer("word_chars", word_chars)
        self.register_buffer("word_len", torch.tensor([len(w) for w in vocab]))
        self.register_buffer("used", torch.tensor([n > 0 for n in freqs]))  # tokens seen in training: MMD's sample
        self.register_buffer("text_ids", torch.tensor(list(text_ids), dtype=torch.long))  # text tokens of Eq. 6
        self.register_buffer("sigmas", torch.tensor(list(sigmas), dtype=torch.float64))
        self.s0 = nn.Parameter(torch.randn(d) * 0.1)  # the slow token's own embedding
        self.f = Projection(d, hidden, d_llm)

    def sentence(self, chars):
        """A video's character tokens -> its word ids: repeat pre-processing (s0), then longest-match segmentation."""
        return _longest_match(preprocess(chars, self.n_chars), self.trie) if chars else []

    def char_table(self, codebook):
        return torch.cat([codebook, self.s0[None].to(codebook.dtype)])  # (M + 1, d): s_1..s_M and s0

    def word_table(self, codebook, g):
        """S^w (n_words, d): each word's character embeddings run through g (Sec. 3.3: "composing all features of the
        character-level tokens into the word-level tokens via our autoregressive model g"); the word's embedding is
        the context after its last character. A single-character word is g of that one character."""
        x = self.char_table(codebook)[self.word_chars]  # (n_words, L, d)
        mask = torch.arange(x.shape[1], device=x.device) < self.word_len[:, None]  # (n_words, L)
        c = g(x, mask)  # (n_words, L, d)
        return c[torch.arange(len(c), device=x.device), self.word_len - 1]  # (n_words, d)

    def mmd_loss(self, codebook, g, text_embeddings, S_w=None, words=True):
        """Eq. 6 at both levels: MMD(f(characters), text) + MMD(f(words), text), over the tokens seen in training,
        against the LLM's input embeddings of the text tokens of the training translations. words=False: the
        character level alone, over all M of VQ-Sign's codes, no s0 (Table 5 "w/o codebook reconstruction"; `used`
        counts a character only where the segmentation leaves it alone, not inside words)."""
        if self.text_ids.numel() == 0 or self.sigmas.numel() == 0:
            raise ValueError("SignTokens has no text_ids / sigmas: they are set by the cra stage")
        q = text_embeddings[self.text_ids].float()  # (n_t, d_llm), the frozen LLM's: no gradient
        sig = self.sigmas.tolist()
        if words:
            S_w = self.word_table(codebook, g) if S_w is None else S_w  # a caller that has S_w passes it
        with torch.autocast(q.device.type, enabled=False):  # f and Eq. 6 in fp32 under train.py's bf16 autocast
            if not words:
                return mmd(self.f(codebook.float()), q, sig)
            chars = self.f(self.char_table(codebook)[self.used[: self.n_chars + 1]].float())  # (n_c, d_llm)
            words = self.f(S_w[self.used].float())  # (n_w, d_llm)
            return mmd(chars, q, sig) + mmd(words, q, sig)
