"""The active-learning experiment of ALPS (issues #7 and #15): from zero labels, which acquisition
order reaches a given accuracy with the fewest labels — random, the embedding-based batch
heuristics (typiclust, coreset, badge), Bayesian uncertainty (bald, batch_bald) or the server's
default acquisition schedule (typiclust for the cold start, then bald) — and which covers rare
classes first?

Run it with ``.venv/bin/python -m experiments.active_learning --out experiments/results``
(see ``active_learning.py``); the results are described in ``EXPERIMENTS.md``.
"""
