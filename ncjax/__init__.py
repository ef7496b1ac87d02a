"""ncjax: neural collapse, the NC3 fairness regulariser and bias benchmarks for BERT masked LMs in JAX."""

__version__ = "0.1.0"
