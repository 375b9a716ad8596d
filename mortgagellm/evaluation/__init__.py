"""Evaluation shared by the evaluate stage and the report: the held-out sets (sets.py), a model's
answers through Ray Data (generate.py), scoring with intervals and the one table of tasks,
metrics and variants (scoring.py), and the routed system through the serving protocol
(routed.py).
"""
