"""The cost-estimation experiment of Sec. 4.5 (Fig. 6, Table 7): chained vs local estimates."""
import torch
from hypothesis import given, settings, strategies as st

from cost import CostModel, arch_cost, flops_table
from studies.estimation import estimation_experiment
from supernet import get_space
from viterbi import derive, random_arch_params


def test_experiment_on_toy_reports_both_estimators():
    """A few hundred random (alpha, beta): both estimators get correlations and errors in range."""
    result, points = estimation_experiment(get_space("toy", 32, 3, 10), 300, seed=1)
    assert result["samples"] == len(points) == 300
    for name in ("chained", "local"):
        r = result[name]
        assert -1 <= r["pearson"] <= 1 and -1 <= r["kendall"] <= 1 and r["mean_rel_error"] >= 0
    assert len({round(real) for real, _, _ in points}) > 10  # the draws reach many different archs


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000))
def test_one_hot_chained_is_exact_and_local_counts_blocks_off_the_path(seed):
    """Eq. 7 vs Eq. 9 with one-hot alpha, beta: chained = the derived arch's real FLOPs; local adds
    every block off the Viterbi path (B_0 always lies on it, so local > real whenever one is off)."""
    space = get_space("toy", 32, 3, 10)
    table = flops_table(space)
    model = CostModel(space, table, skip_price=0)
    alphas, p = random_arch_params(space, torch.Generator().manual_seed(seed), scale=1.0)
    arch = derive(space, alphas, p)
    one_hot_alphas = [torch.nn.functional.one_hot(a.argmax(), len(a)).double() * 1e3 for a in alphas]
    path = arch["path"]
    one_hot_p = torch.tensor([1.0 if (i, j) in zip(path, path[1:]) else 0.0 for i, j in space.edges],
                             dtype=torch.float64)
    real = arch_cost(arch, table)
    assert model(one_hot_alphas, one_hot_p).item() == real
    local = model(one_hot_alphas, one_hot_p, "local").item()
    off_path = [j for j in range(space.n + 1) if j not in path]
    off_cost = sum(model.terms(one_hot_alphas, one_hot_p)[0][j].item() for j in off_path)
    assert abs(local - (real + off_cost)) <= 1e-6 * real
    if off_cost > 0:  # an off-path block whose layers are not all skip
        assert local > real
