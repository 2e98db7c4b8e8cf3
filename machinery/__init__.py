"""The run machinery: what runs the paper's modules (arguments and one-line refusals, the run folder and its
lock, processes and devices, data, pictures, the search's command line, what a finished search reports). A
reader of the paper need not open it; the paper's modules (supernet.py, cost.py, viterbi.py) import none of it.
"""
