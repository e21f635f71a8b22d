"""The active-learning experiment of ALPS (issue #7): does ordering the labelling work by
Bayesian uncertainty (MC-Dropout + BALD) reach a given accuracy with fewer labels than random
order, and help most on rare classes?

Run it with ``.venv/bin/python -m experiments.active_learning --out experiments/results``
(see ``active_learning.py``); the results are described in ``EXPERIMENTS.md``.
"""
