"""Cost tables and the chained cost estimation of DenseNAS (Sec. 3.3, Eq. 5-9).

A cost table maps an operation signature "op/c_in/c_out/stride/resolution" (supernet.signature)
to a cost, so identical operations share one entry. FLOPs tables are computed here from the
counter below, the one source of truth for FLOPs (multiply-accumulates of conv and linear
layers at batch 1, the paper's convention); latency tables (latency.py) use the same format.

    python cost.py --space mbv2 [--input-size N] [--json]   build and summarise (or print) a FLOPs table
(The chained-vs-local experiment of Fig. 6 and Table 7 is `python -m studies estimation`.)
"""
import json
import math
from collections import defaultdict
from functools import lru_cache

import torch
import torch.nn as nn
import torch.nn.functional as F

from supernet import SPACES, InvalidInput, Parser, arch_signatures, get_space, make_op, path_probs, run


# ----------------------------------------------------------------------------------------
# FLOPs: multiply-accumulates of Conv2d and Linear layers (the paper's convention: MobileNetV2 1.0 is 300M)

def count_flops(model, input_shape, device=None):
    """MACs of one image through `model`; input_shape is (C, H, W). Runs one forward pass."""
    total = 0

    def hook(m, inp, out):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += out[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            total += out[0].numel() * m.in_features

    if device is None:
        device = next(model.parameters()).device
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total


@lru_cache(maxsize=None)
def op_flops(sig):
    """FLOPs of one operation signature, counted on the meta device (shapes only, no compute)."""
    op, c_in, c_out, stride, res = parse_signature(sig)
    with torch.device("meta"):
        m = make_op(op, c_in, c_out, stride)
    shape = (c_in,) if op == "linear" else (c_in, res, res)
    return count_flops(m, shape, device="meta")


def parse_signature(sig):
    try:
        op, *nums = sig.split("/")
        c_in, c_out, stride, res = (int(v) for v in nums)
    except ValueError:
        raise InvalidInput(f"malformed operation signature '{sig}'") from None
    return op, c_in, c_out, stride, res


# ----------------------------------------------------------------------------------------
# Cost tables: {"metric", "meta": {space, input_size, connect, ...}, "costs": {signature: cost}}

def space_signatures(space):
    """Every distinct operation signature the super network of `space` can use."""
    sigs = [s for j in range(space.n + 1) for s in space.fixed_signatures(j)]
    sigs += [s for slot in space.slots for s in slot.signatures()] + space.derived_classifiers()
    return sorted(set(sigs))


def table_meta(space, **extra):
    return dict(space=space.name, input_size=space.input_size, in_channels=space.in_channels,
                num_classes=space.num_classes, connect=space.connect, **extra)


def flops_table(space):
    """The analytic FLOPs table of a space (Sec. 3.3: 'a lookup table which records the cost of each operation')."""
    return {"metric": "flops", "meta": table_meta(space),
            "costs": {s: op_flops(s) for s in space_signatures(space)}}


COST_RANGE = (1e-9, 1e15)  # what a cost may be (ms or FLOPs): beyond it log(cost) of Eq. 8 and its gradient overflow


def check_costs(t, path):
    """Refuse what is not a cost table: JSON with 'metric', 'meta' and 'costs', every cost a finite number in
    COST_RANGE (0 for a skip): a negative, zero or NaN latency would turn the cost term of Eq. 8 into a reward,
    -inf or a NaN, and so would a subnormal or huge one once alpha has moved."""
    if not (isinstance(t, dict) and isinstance(t.get("costs"), dict) and isinstance(t.get("meta"), dict)
            and isinstance(t.get("metric"), str)):
        raise InvalidInput(f"{path} is not a cost table (JSON with 'metric', 'meta' and 'costs')")
    for sig, c in t["costs"].items():  # only a skip (the identity) may cost nothing
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) \
                or not (c == 0 and sig.startswith("skip/") or COST_RANGE[0] <= c <= COST_RANGE[1]):
            raise InvalidInput(f"cost table {path}: the cost of {sig} is {c!r}, not a finite number > 0 (between "
                               f"{COST_RANGE[0]:g} and {COST_RANGE[1]:g})")


def fit_data_ops(table, space):
    """Price what depends on the data set, not on the space: the stem's input channels and the classifier's
    class count. A table measured for other data has the same operation with another such width; its cost,
    scaled by the FLOPs ratio, prices the missing one (the same for every architecture of the space, so
    the search is not held up by it). Returns {priced signature: the table's signature it came from}."""
    classifiers = sorted(set(space.fixed_signatures(space.n) + space.derived_classifiers()))
    costs, priced = table["costs"], {}
    # the fields that must agree: all but the stem's input channels, all but the classifier's class count
    for sig, keep in [(space.fixed_signatures(0)[0], (0, 2, 3, 4))] + [(c, (0, 1, 3, 4)) for c in classifiers]:
        if sig in costs:
            continue
        want = [parse_signature(sig)[i] for i in keep]
        source = next((s for s in sorted(costs) if [parse_signature(s)[i] for i in keep] == want), None)
        if source is not None and op_flops(source) > 0:
            costs[sig] = costs[source] * op_flops(sig) / op_flops(source)
            priced[sig] = source
    return priced


def check_table(table, space, name="cost table"):
    """Refuse a table measured for another space, input size or connection number, or one that lacks an op
    (after fit_data_ops has priced the stem and classifier of other data); returns fit_data_ops' answer."""
    meta, want = table["meta"], table_meta(space)
    for key in ("space", "input_size", "connect"):
        if meta.get(key) != want[key]:
            raise InvalidInput(f"{name} was built for {key}={meta.get(key)}, but the search uses {want[key]}")
    priced = fit_data_ops(table, space)
    missing = [s for s in space_signatures(space) if s not in table["costs"]]
    if missing:
        raise InvalidInput(f"{name} lacks {len(missing)} operation(s) this space needs, e.g. {missing[0]}")
    return priced


# ----------------------------------------------------------------------------------------
# The estimators

def expected_cost(alpha, costs, temperature=1.0, mask=None):
    """Eq. 5: a layer's cost is the softmax(alpha / T)-weighted sum of its candidates' costs (batched
    over rows). mask (bool, like alpha): the softmax and the sum run over the masked candidates only."""
    a = alpha / temperature
    if mask is not None:
        a = a.masked_fill(~mask, float("-inf"))
    return (F.softmax(a, -1) * costs).sum(-1)


def _weighted_sum(weights, values):
    if weights and isinstance(weights[0], torch.Tensor):
        return torch.stack(weights) @ torch.stack([torch.as_tensor(v, dtype=weights[0].dtype) for v in values])
    return sum(w * v for w, v in zip(weights, values))


def chained_cost(cost_b, cost_align, p):
    """Eq. 6-7: c~_n = cost_b^n;  c~_i = cost_b^i + sum_j p_ij (cost_align^ij + c~_j);  cost = c~_0.

    Eq. 6 as printed has cost_b^j where the recursion needs the chained c~_j; we follow the maths
    ("with a recursion mechanism", Eq. 7). Since sum_j p_ij = 1, c~_0 is the expected cost of a path drawn from the
    Markov chain p. cost_b: block costs indexed 0..n; cost_align, p: dicts keyed by (i, j).
    Floats give a float; tensors give a differentiable 0-d tensor.
    """
    n = len(cost_b) - 1
    succ = defaultdict(list)
    for i, j in p:
        succ[i].append(j)
    c = [None] * (n + 1)
    c[n] = cost_b[n]
    for i in range(n - 1, -1, -1):
        js = succ[i]
        c[i] = cost_b[i] + _weighted_sum([p[i, j] for j in js], [cost_align[i, j] + c[j] for j in js])
    return c[0]


def local_cost(cost_b, cost_align, p):
    """Eq. 9: every block's own cost plus its p-weighted incoming alignment costs, summed over all blocks."""
    edges = list(p)
    return sum(cost_b[i] for i in range(len(cost_b))) + _weighted_sum([p[e] for e in edges],
                                                                     [cost_align[e] for e in edges])


class CostModel:
    """The cost term of the search for one space and table: alpha, p -> the estimated network cost.

    Holds, for every mixed layer of the super network, the table costs of its candidates, so
    that one call computes Eq. 5 for all layers at once and then Eq. 6-7 (or Eq. 9) over the graph.
    skip_price: a skip costs this fraction of the first candidate (the authors' ResNet search);
    None takes the space's own setting, 0 prices skips at their true cost (nothing).
    """

    def __init__(self, space, table, skip_price=None):
        self.space, self.edges = space, list(space.edges)
        price = space.skip_price if skip_price is None else skip_price
        costs = table["costs"]
        self.fixed = [sum(costs[s] for s in space.fixed_signatures(j)) for j in range(space.n + 1)]
        rows = []
        if not space.derived_end_conv:  # the derived ResNets (Table 6) end without the 1x1 conv: a path
            self.fixed[space.n] = 0.0   # into B_n costs the classifier fed by its last block, as theirs does
        for slot in space.slots:
            row = [costs[s] for s in slot.signatures()]
            if slot.block == space.n and not space.derived_end_conv:
                row = [costs[space.classifier_signature(slot.c_in)]]
            rows.append([price * row[0] if o == "skip" and len(row) > 1 else c
                         for o, c in zip(slot.candidates, row)])
        self.rows = rows
        # group slots with the same number of candidates, so Eq. 5 is one batched call per group
        self.groups = defaultdict(list)
        for k, row in enumerate(rows):
            self.groups[len(row)].append(k)
        self.group_costs = {K: torch.tensor([rows[k] for k in ks], dtype=torch.float64)
                            for K, ks in self.groups.items()}

    def terms(self, alphas, p, samples=None):
        """cost_b (list over blocks), cost_align and p (dicts over edges) for the current alpha and p.
        samples ({slot: candidate indices}, as the architecture step draws them): each layer is priced
        over its sampled candidates, weighted by the softmax over those, as its forward is computed
        (the authors' search code); None prices every candidate (Eq. 5)."""
        slot_cost = [None] * len(self.rows)
        for K, ks in self.groups.items():
            a = torch.stack([alphas[k] for k in ks]).double()
            mask = None
            if samples is not None:
                mask = torch.zeros(len(ks), K, dtype=torch.bool)
                for r, k in enumerate(ks):
                    mask[r, samples[k]] = True
                mask = mask.to(a.device)
            costs = expected_cost(a, self.group_costs[K].to(a.device), self.space.temperature, mask)
            for k, c in zip(ks, costs.unbind()):
                slot_cost[k] = c
        cost_b = [torch.tensor(float(f), dtype=torch.float64) for f in self.fixed]
        cost_align = {}
        for slot, c in zip(self.space.slots, slot_cost):
            if slot.edge:
                cost_align[slot.edge] = c
            else:
                cost_b[slot.block] = cost_b[slot.block] + c
        dev = p.device if isinstance(p, torch.Tensor) else "cpu"
        cost_b = [c.to(dev) for c in cost_b]
        p = dict(zip(self.edges, p.double().unbind() if isinstance(p, torch.Tensor) else p))
        return cost_b, cost_align, p

    def __call__(self, alphas, p, estimator="chained", samples=None):
        fn = {"chained": chained_cost, "local": local_cost}[estimator]
        return fn(*self.terms(alphas, p, samples))

    def extremes(self):
        """The least and the most that a network of the space costs by this model: a path B_0 -> B_n with one
        candidate per layer of its blocks (a derived network's cost on a model with skip_price=0). Algorithm 1's
        recursion over the blocks, with the cheapest (dearest) predecessor in place of the most probable."""
        block = [[f, f] for f in self.fixed]
        head = {}
        for slot, row in zip(self.space.slots, self.rows):
            if slot.edge:
                head[slot.edge] = row
            else:
                block[slot.block][0] += min(row)
                block[slot.block][1] += max(row)
        least, most = [self.fixed[0]], [self.fixed[0]]
        for i in range(1, self.space.n + 1):
            into = [j for j, b in self.edges if b == i]
            least.append(min(least[j] + min(head[j, i]) for j in into) + block[i][0])
            most.append(max(most[j] + max(head[j, i]) for j in into) + block[i][1])
        return least[-1], most[-1]


def arch_cost(arch, table):
    """The exact cost of a derived architecture: the sum of its operations' table costs."""
    costs = table["costs"]
    total = 0.0
    for s in arch_signatures(arch):
        if s not in costs:
            if table["metric"] != "flops":
                raise InvalidInput(f"cost table lacks operation {s} of this architecture")
            costs[s] = op_flops(s)
        total += costs[s]
    return total


# ----------------------------------------------------------------------------------------

def main():
    ap = Parser(__doc__)
    ap.add_argument("--space", default="mbv2", help=f"search space ({', '.join(SPACES)}; default mbv2)")
    ap.add_argument("--input-size", type=int, default=224, help="input image size (default 224)")
    ap.add_argument("--num-classes", type=int, default=1000, help="classes (default 1000)")
    ap.add_argument("--connect", type=int, default=None, help="connection number M (default: the space's)")
    ap.add_argument("--json", action="store_true", help="print the FLOPs table as JSON instead of its summary")
    args = ap.parse_args()
    space = get_space(args.space, args.input_size, 3, args.num_classes, args.connect)
    table = flops_table(space)
    if args.json:
        print(json.dumps(table, indent=1))
        return
    costs = table["costs"]
    print(f"FLOPs table of '{space.name}' at {space.input_size}px: {len(costs)} distinct operations")
    model = CostModel(space, table)
    alphas = [torch.zeros(len(s.candidates)) for s in space.slots]
    p = path_probs(torch.zeros(len(space.edges)), space)
    print(f"uniform alpha and beta: chained estimate {model(alphas, p) / 1e6:.1f}M FLOPs, "
          f"local estimate {model(alphas, p, 'local') / 1e6:.1f}M FLOPs")
    top = sorted(costs.items(), key=lambda kv: -kv[1])[:5]
    print("most expensive operations: " + ", ".join(f"{s} {c / 1e6:.1f}M" for s, c in top))


if __name__ == "__main__":
    run(main)
