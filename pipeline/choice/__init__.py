"""Choosing a strategy: the verdict's scores and rule, the comparison's runs, rule and reports, and halving."""
