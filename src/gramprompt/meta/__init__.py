"""GRAM meta-learning: the gradient regulator R_phi, meta-training tasks over a CHC hierarchy,
the bi-level meta-learner and regulated few-shot adaptation."""
