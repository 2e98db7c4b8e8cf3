"""The paper's comparisons that drive the method rather than belong to it, and the benchmark; each runs as
`python -m studies STUDY` (or `python -m studies.bench`).

  random      the random-search baseline (Sec. 4.4, Table 1 "Random Search"): studies/random_search.py
  table1      Table 1 at laptop scale, searched against random networks at equal FLOPs: studies/table1.py
  estimation  chained against local cost estimation (Sec. 4.5, Table 7, Fig. 6): studies/estimation.py
  ground_truth  networks of the laptop space trained stand-alone with several seeds: studies/ground_truth.py
  audit       a search's super network ranking those networks, against their stand-alone accuracy: studies/audit.py
  fidelity    a latency table's predictions against whole networks timed on the device: studies/fidelity.py
  selection   the super network choosing among networks of equal FLOPs, judged by the ground truth: studies/selection.py
  nse_truth   NSE's final networks against random networks of the whole pool at equal FLOPs: studies/nse_truth.py

    python -m studies random --help
"""
import sys

from machinery.cli import UsageError, run_cli
from studies import audit, estimation, fidelity, ground_truth, nse_truth, random_search, selection, table1

STUDIES = {"random": random_search.main, "table1": table1.main, "estimation": estimation.main,
           "ground_truth": ground_truth.main, "audit": audit.main,
           "fidelity": fidelity.main, "nse_truth": nse_truth.main, "selection": selection.main}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    if argv[0] not in STUDIES:
        raise UsageError(f"unknown study '{argv[0]}' (known: {', '.join(STUDIES)}; see --help)")
    STUDIES[argv[0]](argv[1:])


if __name__ == "__main__":
    run_cli(main)
