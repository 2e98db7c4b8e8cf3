"""Hypothesis strategies shared by the test modules: random Markov DAGs and random small spaces."""
import random
from collections import defaultdict

import torch
from hypothesis import strategies as st

import supernet


@st.composite
def markov_dags(draw, min_n=2, max_n=8):
    """(n, p): blocks 0..n, p[(j, i)] a transition probability; every block 1..n has a predecessor,
    every block 0..n-1 a successor, and the probabilities leaving each block sum to 1."""
    n = draw(st.integers(min_n, max_n))
    edges = set()
    for i in range(1, n + 1):
        preds = draw(st.sets(st.integers(0, i - 1), min_size=1, max_size=i))
        edges |= {(j, i) for j in preds}
    for j in range(n):
        if not any(a == j for a, _ in edges):
            edges.add((j, draw(st.integers(j + 1, n))))
    weights = {e: draw(st.floats(0.01, 1.0)) for e in sorted(edges)}
    total = defaultdict(float)
    for (j, _), w in weights.items():
        total[j] += w
    return n, {e: w / total[e[0]] for e, w in weights.items()}


def all_paths(p, n):
    """Every path 0 -> n in the DAG whose edges are the keys of p (brute force)."""
    succ = defaultdict(list)
    for j, i in p:
        succ[j].append(i)

    def walk(node):
        if node == n:
            yield [n]
            return
        for nxt in succ[node]:
            for rest in walk(nxt):
                yield [node] + rest

    return list(walk(0))


def path_prob(p, path):
    prob = 1.0
    for e in zip(path, path[1:]):
        prob *= p[e]
    return prob


@st.composite
def space_defs(draw, max_blocks=6):
    """A random small SpaceDef: widths increasing; stage steps 0/1; the level (resolution halvings)
    steps 0/1 and only where the stage changes; 0..2 basic layers per block. Every consecutive pair
    of blocks is then connected, so the space is always valid for any M >= 1."""
    stem_out = draw(st.integers(2, 8))
    b0_ops = draw(st.sampled_from([(), ("mbconv_k3_e1",)]))
    b0_out = draw(st.integers(2, 8)) if b0_ops else stem_out
    c, level, stage, rows = b0_out, 0, 0, []
    for _ in range(draw(st.integers(1, max_blocks))):
        c += draw(st.integers(1, 6))
        if draw(st.booleans()):
            stage += 1
            level += draw(st.integers(0, 1))
        rows.append((c, level, stage, draw(st.integers(0, 2))))
    end_width = draw(st.sampled_from([c, c + draw(st.integers(1, 12))]))
    cands = draw(st.lists(st.sampled_from(supernet.MBCONVS), min_size=1, max_size=3, unique=True))
    if draw(st.booleans()):
        cands.append("skip")
    align = draw(st.lists(st.sampled_from(supernet.MBCONVS), min_size=1, max_size=2, unique=True))
    return supernet.SpaceDef("rand", stem_out, b0_ops, b0_out, tuple(rows), end_width, tuple(cands),
                             tuple(align), draw(st.sampled_from(["relu6", "relu"])), draw(st.integers(1, 4)),
                             derived_end_conv=draw(st.booleans()))


@st.composite
def spaces(draw, min_size=8, max_size=20):
    defn = draw(space_defs())
    return supernet.Space(defn, draw(st.integers(min_size, max_size)), draw(st.integers(1, 3)),
                          draw(st.integers(2, 5)))


def one_hot_choices(seed, space):
    """Random choices from a seed (so that hypothesis shrinks one integer): for each mixed layer an
    index into its candidates, and for each block 0..n-1 the index (into space.edges) of one outgoing edge."""
    rng = random.Random(seed)
    layer = [rng.randrange(len(s.candidates)) for s in space.slots]
    edge = [rng.randrange(a, b) for a, b in space.out_edge_ranges]
    return layer, edge


def one_hot_params(space, layer, edge, noise_seed=0, big=1e4):
    """alphas and p whose softmax is exactly one-hot on the given choices (random noise elsewhere).

    Returns (alphas, p): a list of tensors in space.slots order and a tensor over space.edges,
    p being the per-block softmax of beta over space.out_edge_ranges (Eq. 3)."""
    g = torch.Generator().manual_seed(noise_seed)
    alphas = []
    for slot, k in zip(space.slots, layer):
        a = torch.randn(len(slot.candidates), generator=g)
        a[k] += big
        alphas.append(a)
    beta = torch.randn(len(space.edges), generator=g)
    beta[list(edge)] += big
    p = torch.cat([torch.softmax(beta[a:b], 0) for a, b in space.out_edge_ranges])
    return alphas, p


def chain_path(space, edge):
    """The block sequence obtained by following the chosen outgoing edge of each block from B_0."""
    path = [0]
    while path[-1] != space.n:
        path.append(space.edges[edge[path[-1]]][1])
    return path
